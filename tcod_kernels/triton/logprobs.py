"""Fused label log-probabilities (and entropies) in Triton: the ``logprobs`` entry of the contract.

Per token, with ``z = (h @ W.T + b) / T``, ``lse = logsumexp(z)`` and ``p = softmax(z)``:

* ``log p[y] = z_y - lse``
* ``H = -sum_v p log p = lse - E_p[z]``, accumulated as ``log s - E_p[z - m]`` with the running
  max ``m`` and ``s = sum exp(z - m)``, so large logits do not cancel.

Passes (the ``[n, V]`` logits never exist):

1. ``_stats_kernel`` — grid (token blocks, vocab splits): online ``m``, ``s``,
   ``a = sum exp(z - m)(z - m)`` and the label logit of each split; merged in PyTorch.
2. ``_grad_kernel`` (backward only) — grid (token blocks, vocab blocks): recompute the tile and
   back-propagate ``dz = (g_logp (onehot(y) - p) - g_H p (log p + H)) / T`` (a bounded ``dz``
   chunk + two GEMMs, or float32 atomics; see ``_tiles``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tcod_kernels.triton import _tiles as tiles
from tcod_kernels.triton._tiles import (
    GRAD_CONFIGS,
    SWEEP_CONFIGS,
    backprop_tile,
    dot_precision,
    launch_blocks,
    logits_tile,
    prepare,
    store_dz,
    tuned,
    vocab_split,
)


@triton.jit
def _stats_kernel(h_ptr, w_ptr, b_ptr, y_ptr, out_ptr, n, V, H, stride_h, stride_w, inv_t, per_split,
                  HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial ``m, s, a, z_y`` of one (token block, vocab split) into ``out[4, splits, n]``."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < n
    y = tl.load(y_ptr + offs_n, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    a = tl.zeros((BLOCK_N,), tl.float32)
    z_y = tl.zeros((BLOCK_N,), tl.float32)
    v_start = split * per_split
    v_end = tl.minimum(v_start + per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        z = logits_tile(h_ptr, w_ptr, b_ptr, offs_n, offs_v, n, V, H, stride_h, stride_w, inv_t,
                        HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, PREC)
        z_y += tl.sum(tl.where(offs_v[None, :] == y[:, None], z, 0.0), axis=1)
        new_m = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - new_m)
        e = tl.exp(z - new_m[:, None])
        if ENTROPY:
            # sum over old columns of exp(z - new_m)(z - new_m) = alpha (a + (m - new_m) s)
            shift = tl.where(m == float("-inf"), 0.0, m - new_m)
            shifted = tl.where((offs_v < V)[None, :], e * (z - new_m[:, None]), 0.0)
            a = alpha * (a + shift * s) + tl.sum(shifted, axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = new_m
    base = out_ptr + split * n + offs_n
    plane = n_splits * n
    tl.store(base, m, mask=row_ok)
    tl.store(base + plane, s, mask=row_ok)
    tl.store(base + 2 * plane, a, mask=row_ok)
    tl.store(base + 3 * plane, z_y, mask=row_ok)


@triton.jit
def _grad_kernel(h_ptr, w_ptr, b_ptr, y_ptr, lse_ptr, ent_ptr, g_lp_ptr, g_ent_ptr, dz_ptr, dh_ptr, dw_ptr, db_ptr,
                 n, V, H, stride_h, stride_w, inv_t,
                 HAS_BIAS: tl.constexpr, ENTROPY: tl.constexpr, STORE_DZ: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient tile of one (token block, vocab block): stored to ``dz`` (chunked strategy) or
    back-propagated with atomics (see ``_tiles``)."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_n < n
    valid = row_ok[:, None] & (offs_v < V)[None, :]
    z = logits_tile(h_ptr, w_ptr, b_ptr, offs_n, offs_v, n, V, H, stride_h, stride_w, inv_t,
                    HAS_BIAS, BLOCK_N, BLOCK_V, BLOCK_K, PREC)
    lse = tl.load(lse_ptr + offs_n, mask=row_ok, other=0.0)
    y = tl.load(y_ptr + offs_n, mask=row_ok, other=-1)
    g_lp = tl.load(g_lp_ptr + offs_n, mask=row_ok, other=0.0)
    log_p = z - lse[:, None]
    p = tl.exp(log_p)
    dz = g_lp[:, None] * (tl.where(offs_v[None, :] == y[:, None], 1.0, 0.0) - p)
    if ENTROPY:
        ent = tl.load(ent_ptr + offs_n, mask=row_ok, other=0.0)
        g_ent = tl.load(g_ent_ptr + offs_n, mask=row_ok, other=0.0)
        dz -= g_ent[:, None] * p * (log_p + ent[:, None])
    dz = tl.where(valid, dz * inv_t, 0.0)
    if STORE_DZ:
        store_dz(dz, dz_ptr, offs_n, offs_v, n, V)
    else:
        backprop_tile(dz, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, offs_n, offs_v, n, V, H, stride_h, stride_w,
                      HAS_BIAS, BLOCK_K, PREC)


_stats = tuned(_stats_kernel, SWEEP_CONFIGS, key=["V", "H"])
_grad = tuned(_grad_kernel, GRAD_CONFIGS, key=["V", "H", "ENTROPY", "STORE_DZ"],
              reset_to_zero=["dh_ptr", "dw_ptr", "db_ptr"])


def _forward(h, w, b, y, inv_t, entropy):
    """(log p[y], lse, entropy or None), float32 [n] each."""
    n, V = h.shape[0], w.shape[0]
    n_splits, per_split = vocab_split(n, V)
    out = torch.empty((4, n_splits, n), dtype=torch.float32, device=h.device)
    dummy = torch.empty(1, dtype=torch.float32, device=h.device)
    _stats[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), n_splits)](
        h, w, dummy if b is None else b, y, out, n, V, h.shape[1], h.stride(0), w.stride(0), inv_t, per_split,
        HAS_BIAS=b is not None, ENTROPY=entropy, PREC=dot_precision(h.dtype), **launch_blocks(),
    )
    m, s, a, z_y = out.unbind(0)
    m_all = m.max(dim=0).values
    scale = torch.exp(m - m_all)
    s_all = (s * scale).sum(dim=0)
    lse = m_all + torch.log(s_all)
    logp = z_y.sum(dim=0) - lse
    if not entropy:
        return logp, lse, None
    # a_k = sum_k exp(z - m_k)(z - m_k); rebased on m_all: scale_k (a_k + (m_k - m_all) s_k)
    a_all = (scale * (a + (m - m_all) * s)).sum(dim=0)
    return logp, lse, torch.log(s_all) - a_all / s_all


def _gradients(h, w, b, y, inv_t, lse, ent, g_lp, g_ent):
    """float32 (dh, dw, db | None) for the upstream gradients of log p[y] (and of the entropy)."""
    n, V = h.shape[0], w.shape[0]
    dummy = torch.empty(1, dtype=torch.float32, device=h.device)
    dh = torch.empty(h.shape, dtype=torch.float32, device=h.device)
    dw = torch.zeros(w.shape, dtype=torch.float32, device=h.device)
    db = torch.zeros(V, dtype=torch.float32, device=h.device) if b is not None else None
    entropy = ent is not None
    ent, g_ent = (ent, g_ent) if entropy else (lse, g_lp)  # placeholders when unused
    flags = dict(HAS_BIAS=b is not None, ENTROPY=entropy, PREC=dot_precision(h.dtype), **launch_blocks())
    b_arg = dummy if b is None else b

    def grid(rows):
        return lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), triton.cdiv(V, meta["BLOCK_V"]))

    if tiles.GRAD_STRATEGY == "atomic":
        dh.zero_()
        _grad[grid(n)](
            h, w, b_arg, y, lse, ent, g_lp, g_ent, dummy, dh, dw, dummy if db is None else db,
            n, V, h.shape[1], h.stride(0), w.stride(0), inv_t, STORE_DZ=False, **flags,
        )
        return dh, dw, db
    rows = tiles.chunk_rows(n, V, h.element_size())
    dz = torch.empty((rows, V), dtype=h.dtype, device=h.device)
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        _grad[grid(r1 - r0)](
            h[r0:r1], w, b_arg, y[r0:r1], lse[r0:r1], ent[r0:r1], g_lp[r0:r1], g_ent[r0:r1], dz, dummy, dummy, dummy,
            r1 - r0, V, h.shape[1], h.stride(0), w.stride(0), inv_t, STORE_DZ=True, **flags,
        )
        tiles.backprop_chunk(dz[: r1 - r0], h[r0:r1], w, dh[r0:r1], dw, db)
    return dh, dw, db


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, b, y, temperature, return_entropy):
        logp, lse, ent = _forward(h, w, b, y, 1.0 / temperature, return_entropy)
        ctx.temperature = temperature
        ctx.dtypes = (h.dtype, w.dtype, None if b is None else b.dtype)
        ctx.save_for_backward(h, w, b, y, lse, ent)
        return (logp, ent) if return_entropy else logp

    @staticmethod
    def backward(ctx, g_lp, g_ent=None):
        h, w, b, y, lse, ent = ctx.saved_tensors
        if g_lp is None:
            g_lp = torch.zeros_like(lse)
        if ent is not None and g_ent is None:
            g_ent = torch.zeros_like(lse)
        grads = _gradients(h, w, b, y, 1.0 / ctx.temperature, lse, ent, g_lp.float().contiguous(),
                           None if ent is None else g_ent.float().contiguous())
        out = tuple(None if gr is None else gr.to(dt) for gr, dt in zip(grads, ctx.dtypes))
        return out + (None,) * 3


def logprobs(h, w, b, targets, *, temperature, return_entropy):
    """Backend contract entry (see ``tcod_kernels.api``): [n] log-probs, or (logp, entropy);
    float32, float64 for float64 hidden states (computed in float32)."""
    out_dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
    h, w, b = prepare(h), prepare(w), prepare(b)
    y = targets.long().contiguous()
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (h, w, b))
    if needs_grad:
        out = _FusedLogprobs.apply(h, w, b, y, temperature, return_entropy)
    else:
        logp, _, ent = _forward(h, w, b, y, 1.0 / temperature, return_entropy)
        out = (logp, ent) if return_entropy else logp
    if return_entropy:
        return out[0].to(out_dtype), out[1].to(out_dtype)
    return out.to(out_dtype)
