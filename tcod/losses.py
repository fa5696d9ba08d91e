"""OPD losses on packed batches, built on :mod:`tcod_kernels` (no logits tensor).

Every function here takes *label-aligned* per-position tensors ``[R, L]`` of a
:class:`tcod_kernels.packing.PackedBatch` (position ``t`` scores the token at ``t + 1``) and
a bool ``mask`` of the positions trained at this step (the curriculum window of assistant
tokens).

* :func:`sampled_opd_loss`: the paper's sampled-token OPD. Per token the advantage is
  ``A = kl_coef * (teacher_lp - student_lp)`` (detached; its mean is minus a reverse-KL
  estimate), optimized with the PPO-clipped surrogate
  ``max(-A * r, -A * clip(r, 1 - clip_low, 1 + clip_high))`` where ``r = exp(lp - lp_old)``.
  ``lp_old`` is the sampler's log-prob (``ratio_base="sampler"``) or the trainer's own
  log-prob before the update (``ratio_base="trainer"``); with the latter, truncated
  importance sampling multiplies each token by ``min(exp(lp_old - sampler_lp), tis_cap)``
  to correct the sampler/trainer mismatch.
* :func:`full_kl_loss`: the full-vocabulary divergence (forward, reverse or JSD) from both
  models' last hidden states through :func:`tcod_kernels.fused_kl`.

Aggregation (:func:`token_weights`): ``"token-mean"`` averages over all trained tokens;
``"seq-mean-token-mean"`` averages each trajectory's tokens, then the trajectories.
"""

from __future__ import annotations

from typing import Optional

import torch

from tcod_kernels import fused_kl

AGGREGATIONS = ("token-mean", "seq-mean-token-mean")


def token_weights(mask: torch.Tensor, seq_ids: torch.Tensor, num_sequences: int, aggregation: str,
                  total: Optional[float] = None) -> torch.Tensor:
    """Float32 ``[R, L]`` weights over ``mask`` (0 elsewhere) that sum to 1 (all 0 if empty).

    ``total`` replaces the local normalizer when a batch is split into micro-batches: the
    number of trained tokens (token-mean) or of trajectories with a trained token
    (seq-mean-token-mean) over the whole batch, so the micro-batch weights sum to 1 together.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"loss.aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    m = mask.to(torch.float32)
    if aggregation == "token-mean":
        return m / (m.sum().clamp(min=1.0) if total is None else max(float(total), 1.0))
    sid = seq_ids.long().clamp(min=0)
    counts = torch.zeros(num_sequences, dtype=torch.float32, device=mask.device)
    counts.index_add_(0, sid.reshape(-1), m.reshape(-1))
    present = int((counts > 0).sum()) if total is None else total
    per_token = m / counts.clamp(min=1.0)[sid]
    return per_token / max(float(present), 1.0)


def present_sequences(mask: torch.Tensor, seq_ids: torch.Tensor) -> int:
    """Number of distinct sequences with at least one position in ``mask``."""
    return int(seq_ids[mask].unique().numel())


def sampled_opd_loss(
    student_lp: torch.Tensor,
    teacher_lp: torch.Tensor,
    sampler_lp: Optional[torch.Tensor],
    weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ratio_base: str = "sampler",
    old_lp: Optional[torch.Tensor] = None,
    tis_cap: float = 0.0,
):
    """PPO-clipped sampled-token OPD loss; returns ``(loss, stats)``.

    ``student_lp`` carries the gradient; ``teacher_lp``, ``sampler_lp`` and ``old_lp``
    (trainer log-probs before this update; default ``student_lp`` detached) are constants.
    ``weights`` come from :func:`token_weights`. ``stats`` are detached scalars: the
    reverse-KL estimate, the clip fraction and the mean ratio over the masked tokens.
    """
    if ratio_base not in ("sampler", "trainer"):
        raise ValueError(f"loss.ratio_base must be 'sampler' or 'trainer', got {ratio_base!r}")
    if ratio_base == "sampler" and sampler_lp is None:
        raise ValueError("ratio_base='sampler' needs the sampler's log-probs (the batch carries none)")
    if tis_cap and ratio_base != "trainer":
        raise ValueError("loss.tis_cap needs ratio_base='trainer' (with 'sampler' the ratio already is the correction)")
    old_lp = student_lp.detach() if old_lp is None else old_lp
    base = sampler_lp if ratio_base == "sampler" else old_lp
    advantage = (kl_coef * (teacher_lp - student_lp.detach())).masked_fill(~mask, 0.0)
    log_ratio = (student_lp - base).masked_fill(~mask, 0.0)
    ratio = torch.exp(log_ratio.clamp(max=20.0))
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(-advantage * ratio, -advantage * clipped)
    if tis_cap:
        if sampler_lp is None:
            raise ValueError("loss.tis_cap needs the sampler's log-probs (the batch carries none)")
        per_token = per_token * torch.exp(old_lp - sampler_lp).clamp(max=tis_cap).masked_fill(~mask, 0.0)
    loss = (per_token * weights).sum()
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = {
            "kl_estimate": ((student_lp.detach() - teacher_lp) * mask).sum() / n,
            "clip_frac": ((ratio.detach() != clipped.detach()) & mask).sum() / n,
            "ratio_mean": (ratio.detach() * mask).sum() / n,
        }
    return loss, stats


def full_kl_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    weights: torch.Tensor,
    mask: torch.Tensor,
    *,
    student_bias=None,
    teacher_bias=None,
    divergence: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: Optional[int] = None,
    backend: str = "auto",
):
    """Full-vocabulary divergence per token (fused, no logits), weighted; ``(loss, per_token_kl)``.

    ``per_token_kl`` is float32 ``[R, L]`` (0 outside ``mask``), detached, for metrics.
    """
    per_token = fused_kl(
        student_hidden, student_weight, teacher_hidden.to(teacher_weight.dtype), teacher_weight,
        student_bias=student_bias, teacher_bias=teacher_bias, divergence=divergence, beta=beta,
        temperature=temperature, mask=mask, vocab_size=vocab_size, reduction="none", backend=backend,
    )
    return (per_token * weights).sum(), per_token.detach()
