"""Chunked pure-PyTorch backend: runs on any device, the CPU default.

Rows (tokens) are processed in chunks of ``C`` rows with ``C * V`` at most
``CHUNK_ELEMENTS``, so only ``[C, V]`` float32 tiles ever exist, never ``[N, V]``.

Gradients (``z = logits / T``, one row):

* forward KL  ``dL/dz_s = p_s - p_t``
* reverse KL  ``dL/dz_s = p_s (log p_s - log p_t - KL)``
* JSD         ``dL/dz_s = (1 - beta) p_s (log p_s - log M - KL(p_s || M))``
* log-prob    ``d log p[y] / dz = onehot(y) - p``;  entropy ``dH/dz = -p (log p + H)``

then ``dL/dlogits = dL/dz / T``, ``d hidden = dlogits @ W``, ``d W = dlogits^T @ hidden``.

With ``reduction="sum"`` (and "mean", which api.py builds on it) the gradient is formed
in the forward pass, so the backward pass is a scale by ``grad_output`` and no logits are
recomputed. With per-token outputs (``"none"``, log-probs) the backward pass recomputes
each chunk with per-row ``grad_output`` weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

CHUNK_ELEMENTS = 1 << 21  # rows per chunk = CHUNK_ELEMENTS // vocab (at least 1)


def availability(device: torch.device):
    return True, ""


def _math_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_rows(n: int, vocab: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(vocab, 1)))


class _Linear:
    """One model's ``lm_head`` restricted to its first ``vocab`` rows, with math-dtype logits.

    Logits are produced in the math dtype straight from the GEMM (fp32 accumulate and output
    on CUDA via ``out_dtype``; elsewhere the operands are upcast first), never rounded to the
    input dtype.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], vocab: int, dtype: torch.dtype):
        self.dtype = dtype
        w = weight[:vocab]
        self.native = weight.dtype == dtype
        self.out_dtype_gemm = not self.native and weight.is_cuda
        self.weight = w if (self.native or self.out_dtype_gemm) else w.to(dtype)
        self.bias = None if bias is None else bias[:vocab].to(dtype)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.out_dtype_gemm:
            out = torch.mm(h, self.weight.T, out_dtype=self.dtype)
        else:
            out = h.to(self.dtype) @ self.weight.T
        if self.bias is not None:
            out += self.bias
        return out

    def grad_hidden(self, dlogits: torch.Tensor) -> torch.Tensor:
        """``dlogits @ W`` in the math dtype."""
        if self.out_dtype_gemm:
            return torch.mm(dlogits.to(self.weight.dtype), self.weight, out_dtype=self.dtype)
        return dlogits @ self.weight


def _log_softmax_(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """In place: ``z <- z / T - logsumexp(z / T)``, the row max subtracted first for accuracy."""
    z.div_(temperature)
    z.sub_(z.amax(dim=-1, keepdim=True))
    z.sub_(torch.logsumexp(z, dim=-1, keepdim=True))
    return z


# --------------------------------------------------------------------------- KL


@dataclass(frozen=True)
class _KLConfig:
    divergence: str
    beta: float
    temperature: float
    vocab_size: int
    reduction: str  # "sum" | "none"
    grad_wanted: bool


def _kl_rows(logp_s: torch.Tensor, logp_t: torch.Tensor, cfg: _KLConfig, want_grad: bool):
    """Per-row divergence and (optionally) ``dL/dz_s``; consumes ``logp_t`` as scratch."""
    if cfg.divergence == "forward":
        p_t = logp_t.exp()
        loss = (p_t * (logp_t - logp_s)).sum(-1)
        dz = torch.exp(logp_s).sub_(p_t) if want_grad else None
        return loss, dz
    p_s = logp_s.exp()
    if cfg.divergence == "reverse":
        diff = logp_s - logp_t  # log p_s - log p_t
        loss = (p_s * diff).sum(-1)
        dz = diff.sub_(loss.unsqueeze(-1)).mul_(p_s) if want_grad else None
        return loss, dz
    beta = cfg.beta
    log_m = torch.logaddexp(logp_t + math.log(beta), logp_s + math.log(1.0 - beta))
    kl_t = (logp_t.exp() * (logp_t - log_m)).sum(-1)  # KL(p_t || M)
    diff = logp_s - log_m  # log p_s - log M
    kl_s = (p_s * diff).sum(-1)  # KL(p_s || M)
    loss = beta * kl_t + (1.0 - beta) * kl_s
    dz = diff.sub_(kl_s.unsqueeze(-1)).mul_(p_s).mul_(1.0 - beta) if want_grad else None
    return loss, dz


def _kl_sweep(sh, sw, sb, th, tw, tb, cfg: _KLConfig, row_weights: Optional[torch.Tensor], want_grad: bool):
    """One pass over row chunks: per-row losses and, when asked, gradients.

    ``row_weights`` ([n] or None = all ones) multiplies each row's gradient (the incoming
    ``grad_output`` of a per-token loss). Returns (loss [n], d hidden, d weight, d bias) with
    gradients in the math dtype and full weight shape (rows >= vocab_size stay 0).
    """
    dtype = _math_dtype(sh, th)
    V, T = cfg.vocab_size, cfg.temperature
    student = _Linear(sw, sb, V, dtype)
    teacher = _Linear(tw, tb, V, dtype)
    n = sh.shape[0]
    losses = torch.empty(n, dtype=dtype, device=sh.device)
    d_hidden = d_weight = d_bias = None
    if want_grad:
        d_hidden = torch.empty(n, sh.shape[1], dtype=dtype, device=sh.device)
        d_weight = torch.zeros(sw.shape, dtype=dtype, device=sw.device)
        d_bias = torch.zeros(sw.shape[0], dtype=dtype, device=sw.device) if sb is not None else None
    rows = _chunk_rows(n, V)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        h = sh[start:stop]
        logp_s = _log_softmax_(student.logits(h), T)
        logp_t = _log_softmax_(teacher.logits(th[start:stop]), T)
        loss, dz = _kl_rows(logp_s, logp_t, cfg, want_grad)
        losses[start:stop] = loss
        if not want_grad:
            continue
        scale = (1.0 / T) if row_weights is None else (row_weights[start:stop].to(dtype) / T).unsqueeze(-1)
        dlogits = dz.mul_(scale)
        d_hidden[start:stop] = student.grad_hidden(dlogits)
        d_weight[:V].addmm_(dlogits.T, h.to(dtype))
        if d_bias is not None:
            d_bias[:V] += dlogits.sum(0)
    return losses, d_hidden, d_weight, d_bias


class _FusedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, sb, th, tw, tb, cfg: _KLConfig):
        ctx.cfg = cfg
        th, tw = th.detach(), tw.detach()
        tb = tb.detach() if tb is not None else None
        if cfg.reduction == "sum":
            losses, dh, dw, db = _kl_sweep(sh, sw, sb, th, tw, tb, cfg, None, cfg.grad_wanted)
            ctx.save_for_backward(dh, dw, db)
            ctx.dtypes = (sh.dtype, sw.dtype, None if sb is None else sb.dtype)
            return losses.sum()
        losses, _, _, _ = _kl_sweep(sh, sw, sb, th, tw, tb, cfg, None, False)
        ctx.save_for_backward(sh, sw, sb, th, tw, tb)
        return losses

    @staticmethod
    def backward(ctx, grad_out):
        cfg = ctx.cfg
        if cfg.reduction == "sum":
            dh, dw, db = ctx.saved_tensors
            if dh is None:
                raise RuntimeError("fused_kl: the forward pass ran without gradients (grad mode off)")
            s_dtype, w_dtype, b_dtype = ctx.dtypes
            g = grad_out.to(dh.dtype)
            grads = ((dh * g).to(s_dtype), (dw * g).to(w_dtype), None if db is None else (db * g).to(b_dtype))
        else:
            sh, sw, sb, th, tw, tb = ctx.saved_tensors
            _, dh, dw, db = _kl_sweep(sh, sw, sb, th, tw, tb, cfg, grad_out, True)
            grads = (dh.to(sh.dtype), dw.to(sw.dtype), None if db is None else db.to(sb.dtype))
        need = ctx.needs_input_grad
        return tuple(g if need[i] else None for i, g in enumerate(grads)) + (None, None, None, None)


def _grad_wanted(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def kl(sh, sw, sb, th, tw, tb, *, divergence, beta, temperature, vocab_size, reduction):
    """Backend contract of ``tcod_kernels.api``: per-token ("none") or summed ("sum") divergence."""
    cfg = _KLConfig(divergence, beta, temperature, vocab_size, reduction, _grad_wanted(sh, sw, sb))
    return _FusedKL.apply(sh, sw, sb, th, tw, tb, cfg)


# --------------------------------------------------------------------------- log-probs


def _logprob_sweep(h, w, b, targets, temperature, grads: Optional[tuple]):
    """Per-row label log-prob and entropy; with ``grads = (g_logp, g_entropy)`` also d h, d w, d b.

    ``dL/dz = g_logp (onehot - p) - g_entropy p (log p + H)``, then divided by T.
    """
    dtype = _math_dtype(h)
    V = w.shape[0]
    lin = _Linear(w, b, V, dtype)
    n = h.shape[0]
    logp_out = torch.empty(n, dtype=dtype, device=h.device)
    ent_out = torch.empty(n, dtype=dtype, device=h.device)
    if grads is not None:
        d_hidden = torch.empty(n, h.shape[1], dtype=dtype, device=h.device)
        d_weight = torch.zeros(w.shape, dtype=dtype, device=w.device)
        d_bias = torch.zeros(V, dtype=dtype, device=w.device) if b is not None else None
    rows = _chunk_rows(n, V)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        hc, tc = h[start:stop], targets[start:stop].unsqueeze(-1)
        logp = _log_softmax_(lin.logits(hc), temperature)
        p = logp.exp()
        entropy = -(p * logp).sum(-1)
        logp_out[start:stop] = logp.gather(-1, tc).squeeze(-1)
        ent_out[start:stop] = entropy
        if grads is None:
            continue
        g_lp = grads[0][start:stop].to(dtype).unsqueeze(-1)
        g_ent = grads[1][start:stop].to(dtype).unsqueeze(-1)
        # dz = -g_ent * p * (logp + H) - g_lp * p ; then += g_lp at the label
        dz = logp.add_(entropy.unsqueeze(-1)).mul_(-g_ent).sub_(g_lp).mul_(p)
        dz.scatter_add_(-1, tc, g_lp)
        dz.div_(temperature)
        d_hidden[start:stop] = lin.grad_hidden(dz)
        d_weight.addmm_(dz.T, hc.to(dtype))
        if d_bias is not None:
            d_bias += dz.sum(0)
    if grads is None:
        return logp_out, ent_out
    return d_hidden, d_weight, d_bias


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets, temperature):
        ctx.temperature = temperature
        ctx.save_for_backward(h, w, b, targets)
        logp, entropy = _logprob_sweep(h, w, b, targets, temperature, None)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        h, w, b, targets = ctx.saved_tensors
        zeros = None
        if g_logp is None or g_entropy is None:
            zeros = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
        dh, dw, db = _logprob_sweep(
            h, w, b, targets, ctx.temperature,
            (zeros if g_logp is None else g_logp, zeros if g_entropy is None else g_entropy),
        )
        need = ctx.needs_input_grad
        return (
            dh.to(h.dtype) if need[0] else None,
            dw.to(w.dtype) if need[1] else None,
            db.to(b.dtype) if (db is not None and need[2]) else None,
            None,
            None,
        )


def logprobs(h, w, b, targets, *, temperature, return_entropy):
    """Backend contract of ``tcod_kernels.api``: label log-prob per row (and entropy)."""
    logp, entropy = _FusedLogprobs.apply(h, w, b, targets, temperature)
    return (logp, entropy) if return_entropy else logp
