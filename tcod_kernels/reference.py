"""Naive PyTorch implementation: materializes the ``[tokens, vocab]`` logits.

The oracle for tests and benchmarks, written as directly as the math allows and
differentiated by plain autograd. Same signatures as the public API minus ``backend``.
Math is float32 (float64 when the inputs are float64, for the float64 check of this file).

Per token, with ``z = (h @ W.T + b)[:vocab_size] / T`` and ``log p = z - logsumexp(z)``:

* forward KL  ``KL(p_t || p_s) = sum_v p_t (log p_t - log p_s)``
* reverse KL  ``KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)``
* JSD         ``beta KL(p_t || M) + (1 - beta) KL(p_s || M)``,
  ``log M = logaddexp(log beta + log p_t, log(1 - beta) + log p_s)``
* log-prob    ``log p[target]``, entropy ``-sum_v p log p``.
"""

from __future__ import annotations

import math

import torch

from tcod_kernels.api import IGNORE_INDEX


def _math_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def log_probs_full(hidden, weight, bias, temperature, vocab_size, dtype):
    """``log_softmax((hidden @ weight[:vocab_size].T + bias[:vocab_size]) / T)`` in ``dtype``."""
    logits = hidden.to(dtype) @ weight[:vocab_size].to(dtype).T
    if bias is not None:
        logits = logits + bias[:vocab_size].to(dtype)
    return torch.log_softmax(logits / temperature, dim=-1)


def divergence_per_token(logp_s, logp_t, divergence, beta):
    """Per-row divergence between two rows of log-probabilities (last dim = vocab)."""
    p_s, p_t = logp_s.exp(), logp_t.exp()
    if divergence == "forward":
        return (p_t * (logp_t - logp_s)).sum(-1)
    if divergence == "reverse":
        return (p_s * (logp_s - logp_t)).sum(-1)
    log_m = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log(1.0 - beta))
    return beta * (p_t * (logp_t - log_m)).sum(-1) + (1.0 - beta) * (p_s * (logp_s - log_m)).sum(-1)


def fused_kl(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    *,
    student_bias=None,
    teacher_bias=None,
    divergence="reverse",
    beta=0.5,
    temperature=1.0,
    mask=None,
    vocab_size=None,
    reduction="mean",
):
    """Naive teacher-student divergence; see the module docstring for the formulas."""
    dtype = _math_dtype(student_hidden, teacher_hidden)
    V = vocab_size if vocab_size is not None else student_weight.shape[0]
    logp_s = log_probs_full(student_hidden, student_weight, student_bias, temperature, V, dtype)
    with torch.no_grad():
        logp_t = log_probs_full(teacher_hidden, teacher_weight, teacher_bias, temperature, V, dtype)
    per_token = divergence_per_token(logp_s, logp_t, divergence, beta)
    if mask is not None:
        per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
        count = mask.sum()
    else:
        count = per_token.numel()
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / max(int(count), 1)


def fused_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, return_entropy=False):
    """Naive label log-probability (and entropy); targets of -100 give 0."""
    dtype = _math_dtype(hidden)
    logp = log_probs_full(hidden, weight, bias, temperature, weight.shape[0], dtype)
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, torch.zeros_like(targets)).long()
    label = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    label = torch.where(valid, label, torch.zeros_like(label))
    if not return_entropy:
        return label
    entropy = -(logp.exp() * logp).sum(-1)
    return label, torch.where(valid, entropy, torch.zeros_like(entropy))
