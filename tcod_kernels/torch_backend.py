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

CHUNK_ELEMENTS = 1 << 23  # rows per chunk = CHUNK_ELEMENTS // vocab (at least 1): 32 MB fp32 tiles


def availability(device: torch.device):
    return True, ""


def _math_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_rows(n: int, vocab: int) -> int:
    return max(1, min(n, CHUNK_ELEMENTS // max(vocab, 1)))


class _Linear:
    """One model's ``lm_head`` restricted to its first ``vocab`` rows, giving ``z = logits / T``.

    ``z`` comes in the math dtype straight from the GEMM (fp32 accumulate and output on CUDA
    via ``out_dtype``; elsewhere the operands are upcast first), never rounded to the input
    dtype. ``1/T`` is folded into the ``[rows, H]`` GEMM operand, so no pass over ``[rows, V]``.
    """

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], vocab: int, dtype: torch.dtype,
                 temperature: float):
        self.dtype = dtype
        self.inv_t = 1.0 / temperature
        w = weight[:vocab]
        self.native = weight.dtype == dtype
        self.out_dtype_gemm = not self.native and weight.is_cuda
        self.weight = w if (self.native or self.out_dtype_gemm) else w.to(dtype)
        self.bias = None if bias is None else bias[:vocab].to(dtype) * self.inv_t

    def z(self, h: torch.Tensor) -> torch.Tensor:
        """``(h @ W.T + b) / T`` in the math dtype."""
        if self.out_dtype_gemm:
            h = h * self.inv_t if self.inv_t != 1.0 else h
            out = torch.mm(h, self.weight.T, out_dtype=self.dtype)
            return out.add_(self.bias) if self.bias is not None else out
        h = h.to(self.dtype)
        if self.inv_t != 1.0:
            h = h * self.inv_t
        if self.bias is not None:
            return torch.addmm(self.bias, h, self.weight.T)
        return h @ self.weight.T

    def grad_hidden(self, dz: torch.Tensor) -> torch.Tensor:
        """``dz @ W`` in the math dtype."""
        if self.out_dtype_gemm:
            return torch.mm(dz.to(self.weight.dtype), self.weight, out_dtype=self.dtype)
        return dz @ self.weight


def _log_softmax_(z: torch.Tensor) -> torch.Tensor:
    """In place: ``z <- z - logsumexp(z)`` over the last dim (one fused, max-shifted pass)."""
    return torch.log_softmax(z, dim=-1, out=z)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_v a[i, v] * b[i, v]`` per row, without a ``[rows, V]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _accumulate_grads(lin: "_Linear", dz, h, row_scale, d_hidden, d_weight, d_bias, start, stop):
    """Given ``dz = dL/dz`` of one chunk, add its share to d hidden, d weight, d bias.

    ``dL/dlogits = dz * row_scale / T``; the row scale and ``1/T`` are applied to the
    ``[rows, H]`` operands instead of the ``[rows, V]`` tile.
    """
    V = dz.shape[1]
    r = row_scale * lin.inv_t  # scalar or [rows, 1]
    d_hidden[start:stop] = lin.grad_hidden(dz).mul_(r)
    hs = h.to(d_weight.dtype)
    if isinstance(r, torch.Tensor):
        d_weight[:V].addmm_(dz.T, hs * r)
        if d_bias is not None:
            d_bias[:V].addmv_(dz.T, r.view(-1))
    else:
        d_weight[:V].addmm_(dz.T, hs, alpha=r)
        if d_bias is not None:
            d_bias[:V].add_(dz.sum(0), alpha=r)


# --------------------------------------------------------------------------- KL


@dataclass(frozen=True)
class _KLConfig:
    divergence: str
    beta: float
    temperature: float
    vocab_size: int
    reduction: str  # "mean" | "sum" | "none"
    grad_wanted: bool


def _kl_rows(logp_s: torch.Tensor, logp_t: torch.Tensor, cfg: _KLConfig, want_grad: bool):
    """Per-row divergence and (optionally) ``dL/dz_s``. Consumes both inputs as scratch.

    At most four ``[rows, V]`` buffers are alive at once (JSD), two for reverse KL.
    """
    if cfg.divergence == "forward":
        p_t = logp_t.exp()
        loss = _rowdot(p_t, logp_t) - _rowdot(p_t, logp_s)
        dz = logp_s.exp_().sub_(p_t) if want_grad else None  # p_s - p_t
        return loss, dz
    if cfg.divergence == "reverse":
        diff = torch.sub(logp_s, logp_t, out=logp_t)  # log p_s - log p_t
        p_s = logp_s.exp_()
        loss = _rowdot(p_s, diff)
        dz = diff.sub_(loss.unsqueeze(-1)).mul_(p_s) if want_grad else None
        return loss, dz
    beta = cfg.beta
    log_m = torch.add(logp_s, math.log(1.0 - beta))
    torch.logaddexp(log_m, logp_t + math.log(beta), out=log_m)  # log M
    p_t = logp_t.exp()
    kl_t = _rowdot(p_t, logp_t) - _rowdot(p_t, log_m)  # KL(p_t || M)
    del p_t
    diff = torch.sub(logp_s, log_m, out=log_m)  # log p_s - log M
    p_s = logp_s.exp_()
    kl_s = _rowdot(p_s, diff)  # KL(p_s || M)
    loss = beta * kl_t + (1.0 - beta) * kl_s
    dz = diff.sub_(kl_s.unsqueeze(-1)).mul_(p_s).mul_(1.0 - beta) if want_grad else None
    return loss, dz


def _kl_sweep(sh, sw, sb, th, tw, tb, cfg: _KLConfig, grad_scale, want_grad: bool):
    """One pass over row chunks: per-row losses and, when asked, gradients.

    ``grad_scale`` (a float, or an [n] tensor: the incoming ``grad_output`` of a per-token
    loss) multiplies each row's gradient. Returns (loss [n], d hidden, d weight, d bias) with
    gradients in the math dtype and full weight shape (rows >= vocab_size stay 0).
    """
    dtype = _math_dtype(sh, th)
    V = cfg.vocab_size
    student = _Linear(sw, sb, V, dtype, cfg.temperature)
    teacher = _Linear(tw, tb, V, dtype, cfg.temperature)
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
        logp_s = _log_softmax_(student.z(h))
        logp_t = _log_softmax_(teacher.z(th[start:stop]))
        loss, dz = _kl_rows(logp_s, logp_t, cfg, want_grad)
        losses[start:stop] = loss
        if want_grad:
            scale = grad_scale
            if isinstance(scale, torch.Tensor):
                scale = scale[start:stop].to(dtype).unsqueeze(-1)
            _accumulate_grads(student, dz, h, scale, d_hidden, d_weight, d_bias, start, stop)
    return losses, d_hidden, d_weight, d_bias


class _FusedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, sb, th, tw, tb, cfg: _KLConfig):
        ctx.cfg = cfg
        th, tw = th.detach(), tw.detach()
        tb = tb.detach() if tb is not None else None
        if cfg.reduction != "none":
            scale = 1.0 / sh.shape[0] if cfg.reduction == "mean" else 1.0
            losses, dh, dw, db = _kl_sweep(sh, sw, sb, th, tw, tb, cfg, scale, cfg.grad_wanted)
            ctx.save_for_backward(dh, dw, db)
            ctx.dtypes = (sh.dtype, sw.dtype, None if sb is None else sb.dtype)
            return losses.sum() * scale
        losses, _, _, _ = _kl_sweep(sh, sw, sb, th, tw, tb, cfg, 1.0, False)
        ctx.save_for_backward(sh, sw, sb, th, tw, tb)
        return losses

    @staticmethod
    def backward(ctx, grad_out):
        cfg = ctx.cfg
        if cfg.reduction != "none":
            # Gradients were formed in forward. With grad_output == 1 (loss.backward()) they are
            # handed over as they are: autograd adopts them as .grad without a copy (and copies
            # them itself when the graph is retained).
            dh, dw, db = ctx.saved_tensors
            scaled = bool(grad_out != 1)
            g = grad_out.to(dh.dtype)
            grads = tuple(
                None if t is None else (t * g if scaled else t).to(dt)
                for t, dt in zip((dh, dw, db), ctx.dtypes)
            )
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


def _logprob_sweep(h, w, b, targets, temperature, with_entropy: bool, grads: Optional[tuple]):
    """Per-row label log-prob and entropy; with ``grads = (g_logp, g_entropy)`` d h, d w, d b.

    ``dL/dz = g_logp (onehot - p) - g_entropy p (log p + H)`` (then ``/ T`` on the way to logits).
    """
    dtype = _math_dtype(h)
    V = w.shape[0]
    lin = _Linear(w, b, V, dtype, temperature)
    n = h.shape[0]
    logp_out = torch.empty(n, dtype=dtype, device=h.device)
    ent_out = torch.zeros(n, dtype=dtype, device=h.device)
    if grads is not None:
        d_hidden = torch.empty(n, h.shape[1], dtype=dtype, device=h.device)
        d_weight = torch.zeros(w.shape, dtype=dtype, device=w.device)
        d_bias = torch.zeros(V, dtype=dtype, device=w.device) if b is not None else None
    rows = _chunk_rows(n, V)
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        hc, tc = h[start:stop], targets[start:stop].unsqueeze(-1)
        logp = _log_softmax_(lin.z(hc))
        logp_out[start:stop] = logp.gather(-1, tc).squeeze(-1)
        if not with_entropy and grads is None:
            continue
        p = logp.exp()
        if with_entropy:
            ent_out[start:stop] = -_rowdot(p, logp)
        if grads is None:
            continue
        g_lp = grads[0][start:stop].to(dtype).unsqueeze(-1)
        if with_entropy:
            g_ent = grads[1][start:stop].to(dtype).unsqueeze(-1)
            # dz = -p (g_ent (log p + H) + g_lp), then += g_lp at the label
            dz = logp.add_(ent_out[start:stop].unsqueeze(-1)).mul_(g_ent).add_(g_lp).mul_(p).neg_()
        else:
            dz = p.mul_(-g_lp)
        dz.scatter_add_(-1, tc, g_lp)
        _accumulate_grads(lin, dz, hc, 1.0, d_hidden, d_weight, d_bias, start, stop)
    if grads is None:
        return logp_out, ent_out
    return d_hidden, d_weight, d_bias


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, targets, temperature, with_entropy):
        ctx.temperature, ctx.with_entropy = temperature, with_entropy
        ctx.save_for_backward(h, w, b, targets)
        logp, entropy = _logprob_sweep(h, w, b, targets, temperature, with_entropy, None)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        h, w, b, targets = ctx.saved_tensors
        zeros = None
        if g_logp is None or g_entropy is None:
            zeros = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device)
        dh, dw, db = _logprob_sweep(
            h, w, b, targets, ctx.temperature, ctx.with_entropy,
            (zeros if g_logp is None else g_logp, zeros if g_entropy is None else g_entropy),
        )
        need = ctx.needs_input_grad
        return (
            dh.to(h.dtype) if need[0] else None,
            dw.to(w.dtype) if need[1] else None,
            db.to(b.dtype) if (db is not None and need[2]) else None,
            None,
            None,
            None,
        )


def logprobs(h, w, b, targets, *, temperature, return_entropy):
    """Backend contract of ``tcod_kernels.api``: label log-prob per row (and entropy)."""
    logp, entropy = _FusedLogprobs.apply(h, w, b, targets, temperature, return_entropy)
    return (logp, entropy) if return_entropy else logp
