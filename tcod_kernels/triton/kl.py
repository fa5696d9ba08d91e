"""Fused teacher-student divergence in Triton: the ``kl`` entry of the backend contract.

Per token, with ``z = (h @ W.T + b)[:V] / T`` and ``lse = logsumexp(z)``:

* forward  ``KL(p_t||p_s) = E_{p_t}[z_t - z_s] - lse_t + lse_s``
* reverse  ``KL(p_s||p_t) = E_{p_s}[z_s - z_t] - lse_s + lse_t``
* jsd      ``beta KL(p_t||M) + (1-beta) KL(p_s||M)``, ``log M = logaddexp(log beta + log p_t,
  log(1-beta) + log p_s)``

Passes over the vocabulary (the ``[n, V]`` logits never exist; each pass recomputes tiles):

1. ``_stats_kernel`` — one sweep, grid (token blocks, vocab splits): online ``(max, sum)`` of
   student and teacher, plus for forward/reverse the running expectation above (rescaled
   whenever the running max moves). Partial states of the splits are merged in PyTorch.
2. JSD only, ``_jsd_kernel`` — one sweep given both ``lse``: ``KL(p_t||M)`` and ``KL(p_s||M)``.
3. ``_grad_kernel`` — grid (token blocks, vocab blocks): recompute both tiles, form
   ``dz_s = dL/dz_s * g / T`` and back-propagate it (a bounded ``dz`` chunk + two GEMMs, or
   float32 atomics; see ``_tiles``):

   * forward  ``p_s - p_t``
   * reverse  ``p_s (log p_s - log p_t - KL) = p_s ((z_s - z_t) - E_{p_s}[z_s - z_t])``, the
     second form free of the large ``lse`` terms that would cancel
   * jsd      ``(1-beta) p_s (log p_s - log M - KL(p_s||M))``

Reduction "sum" (and "mean", the sum / n): the gradients are formed in the forward pass with
``g = 1`` and the backward only scales them by the incoming scalar. Reduction "none": the forward saves ``lse_s``,
``lse_t`` and the per-token KL term, and the backward runs pass 3 with the per-token ``g``.
"""

from __future__ import annotations

import math

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
    logaddexp,
    logits_tile,
    prepare,
    store_dz,
    tuned,
    vocab_split,
)

_DIVERGENCE_ID = {"forward": 0, "reverse": 1, "jsd": 2}


@triton.jit
def _stats_kernel(sh_ptr, sw_ptr, sb_ptr, th_ptr, tw_ptr, tb_ptr, out_ptr, n, V, Hs, Ht,
                  stride_sh, stride_sw, stride_th, stride_tw, inv_t, per_split,
                  DIVERGENCE: tl.constexpr, HAS_SB: tl.constexpr, HAS_TB: tl.constexpr,
                  PREC_S: tl.constexpr, PREC_T: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial states of one (token block, vocab split) into ``out[5, splits, n]``:
    ``m_s, s_s, m_t, s_t, acc`` with ``s = sum exp(z - m)`` and ``acc`` the unnormalized
    expectation ``sum exp(z_t - m_t)(z_t - z_s)`` (forward) or ``sum exp(z_s - m_s)(z_s - z_t)``
    (reverse); 0 for jsd."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_s = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    m_t = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s_s = tl.zeros((BLOCK_N,), tl.float32)
    s_t = tl.zeros((BLOCK_N,), tl.float32)
    acc = tl.zeros((BLOCK_N,), tl.float32)
    v_start = split * per_split
    v_end = tl.minimum(v_start + per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_ok = (offs_v < V)[None, :]
        zs = logits_tile(sh_ptr, sw_ptr, sb_ptr, offs_n, offs_v, n, V, Hs, stride_sh, stride_sw, inv_t,
                         HAS_SB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_S)
        zt = logits_tile(th_ptr, tw_ptr, tb_ptr, offs_n, offs_v, n, V, Ht, stride_th, stride_tw, inv_t,
                         HAS_TB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_T)
        new_ms = tl.maximum(m_s, tl.max(zs, axis=1))
        new_mt = tl.maximum(m_t, tl.max(zt, axis=1))
        alpha_s = tl.exp(m_s - new_ms)
        alpha_t = tl.exp(m_t - new_mt)
        es = tl.exp(zs - new_ms[:, None])
        et = tl.exp(zt - new_mt[:, None])
        s_s = s_s * alpha_s + tl.sum(es, axis=1)
        s_t = s_t * alpha_t + tl.sum(et, axis=1)
        if DIVERGENCE == 0:
            acc = acc * alpha_t + tl.sum(tl.where(col_ok, et * (zt - zs), 0.0), axis=1)
        elif DIVERGENCE == 1:
            acc = acc * alpha_s + tl.sum(tl.where(col_ok, es * (zs - zt), 0.0), axis=1)
        m_s = new_ms
        m_t = new_mt
    row_ok = offs_n < n
    base = out_ptr + split * n + offs_n
    plane = n_splits * n
    tl.store(base, m_s, mask=row_ok)
    tl.store(base + plane, s_s, mask=row_ok)
    tl.store(base + 2 * plane, m_t, mask=row_ok)
    tl.store(base + 3 * plane, s_t, mask=row_ok)
    tl.store(base + 4 * plane, acc, mask=row_ok)


@triton.jit
def _jsd_kernel(sh_ptr, sw_ptr, sb_ptr, th_ptr, tw_ptr, tb_ptr, lse_s_ptr, lse_t_ptr, out_ptr, n, V, Hs, Ht,
                stride_sh, stride_sw, stride_th, stride_tw, inv_t, per_split, log_beta, log_1mbeta,
                HAS_SB: tl.constexpr, HAS_TB: tl.constexpr, PREC_S: tl.constexpr, PREC_T: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial ``KL(p_t||M)`` and ``KL(p_s||M)`` of one (token block, vocab split) into ``out[2, splits, n]``."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_n < n
    lse_s = tl.load(lse_s_ptr + offs_n, mask=row_ok, other=0.0)
    lse_t = tl.load(lse_t_ptr + offs_n, mask=row_ok, other=0.0)
    kl_tm = tl.zeros((BLOCK_N,), tl.float32)
    kl_sm = tl.zeros((BLOCK_N,), tl.float32)
    v_start = split * per_split
    v_end = tl.minimum(v_start + per_split, V)
    for v0 in range(v_start, v_end, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        col_ok = (offs_v < V)[None, :]
        zs = logits_tile(sh_ptr, sw_ptr, sb_ptr, offs_n, offs_v, n, V, Hs, stride_sh, stride_sw, inv_t,
                         HAS_SB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_S)
        zt = logits_tile(th_ptr, tw_ptr, tb_ptr, offs_n, offs_v, n, V, Ht, stride_th, stride_tw, inv_t,
                         HAS_TB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_T)
        logp_s = zs - lse_s[:, None]
        logp_t = zt - lse_t[:, None]
        log_m = logaddexp(logp_t + log_beta, logp_s + log_1mbeta)
        kl_tm += tl.sum(tl.where(col_ok, tl.exp(logp_t) * (logp_t - log_m), 0.0), axis=1)
        kl_sm += tl.sum(tl.where(col_ok, tl.exp(logp_s) * (logp_s - log_m), 0.0), axis=1)
    base = out_ptr + split * n + offs_n
    tl.store(base, kl_tm, mask=row_ok)
    tl.store(base + n_splits * n, kl_sm, mask=row_ok)


@triton.jit
def _grad_kernel(sh_ptr, sw_ptr, sb_ptr, th_ptr, tw_ptr, tb_ptr, lse_s_ptr, lse_t_ptr, kl_ptr, g_ptr,
                 dz_ptr, dsh_ptr, dsw_ptr, dsb_ptr, n, V, Hs, Ht, stride_sh, stride_sw, stride_th, stride_tw,
                 inv_t, log_beta, log_1mbeta,
                 DIVERGENCE: tl.constexpr, STORE_DZ: tl.constexpr, HAS_SB: tl.constexpr, HAS_TB: tl.constexpr,
                 PREC_S: tl.constexpr, PREC_T: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gradient tile ``dz_s`` of one (token block, vocab block): stored to ``dz`` (chunked
    strategy) or back-propagated with atomics (see ``_tiles``).

    ``kl`` is the per-token ``E_{p_s}[z_s - z_t]`` (reverse) or ``KL(p_s||M)`` (jsd); ``g`` the
    per-token upstream gradient.
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = offs_n < n
    valid = row_ok[:, None] & (offs_v < V)[None, :]
    zs = logits_tile(sh_ptr, sw_ptr, sb_ptr, offs_n, offs_v, n, V, Hs, stride_sh, stride_sw, inv_t,
                     HAS_SB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_S)
    zt = logits_tile(th_ptr, tw_ptr, tb_ptr, offs_n, offs_v, n, V, Ht, stride_th, stride_tw, inv_t,
                     HAS_TB, BLOCK_N, BLOCK_V, BLOCK_K, PREC_T)
    lse_s = tl.load(lse_s_ptr + offs_n, mask=row_ok, other=0.0)
    lse_t = tl.load(lse_t_ptr + offs_n, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + offs_n, mask=row_ok, other=0.0) * inv_t
    logp_s = zs - lse_s[:, None]
    logp_t = zt - lse_t[:, None]
    p_s = tl.exp(logp_s)
    if DIVERGENCE == 0:
        dz = p_s - tl.exp(logp_t)
    elif DIVERGENCE == 1:  # log p_s - log p_t - KL = (z_s - z_t) - E_{p_s}[z_s - z_t]: no lse cancels
        expect = tl.load(kl_ptr + offs_n, mask=row_ok, other=0.0)
        dz = p_s * ((zs - zt) - expect[:, None])
    else:
        kl = tl.load(kl_ptr + offs_n, mask=row_ok, other=0.0)
        log_m = logaddexp(logp_t + log_beta, logp_s + log_1mbeta)
        dz = tl.exp(log_1mbeta) * p_s * (logp_s - log_m - kl[:, None])
    dz = tl.where(valid, dz * g[:, None], 0.0)
    if STORE_DZ:
        store_dz(dz, dz_ptr, offs_n, offs_v, n, V)
    else:
        backprop_tile(dz, sh_ptr, sw_ptr, dsh_ptr, dsw_ptr, dsb_ptr, offs_n, offs_v, n, V, Hs, stride_sh, stride_sw,
                      HAS_SB, BLOCK_K, PREC_S)


_stats = tuned(_stats_kernel, SWEEP_CONFIGS, key=["V", "Hs", "Ht", "DIVERGENCE"])
_jsd = tuned(_jsd_kernel, SWEEP_CONFIGS, key=["V", "Hs", "Ht"])
_grad = tuned(_grad_kernel, GRAD_CONFIGS, key=["V", "Hs", "Ht", "DIVERGENCE", "STORE_DZ"],
              reset_to_zero=["dsh_ptr", "dsw_ptr", "dsb_ptr"])


class _Problem:
    """The fixed arguments of one call: contiguous operands, dtypes, sizes, constants."""

    def __init__(self, sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size):
        self.sh, self.sw, self.th, self.tw = sh, sw, th, tw
        self.sb, self.tb = sb, tb
        self.n, self.V = sh.shape[0], vocab_size
        self.Hs, self.Ht = sh.shape[1], th.shape[1]
        self.div = _DIVERGENCE_ID[divergence]
        self.beta = beta
        self.inv_t = 1.0 / temperature
        # log(beta), log(1 - beta): only used by jsd, any finite value otherwise
        self.log_beta = math.log(beta) if divergence == "jsd" else 0.0
        self.log_1mbeta = math.log1p(-beta) if divergence == "jsd" else 0.0
        self.dummy = torch.empty(1, dtype=torch.float32, device=sh.device)

    def operands(self):
        return (self.sh, self.sw, self.dummy if self.sb is None else self.sb,
                self.th, self.tw, self.dummy if self.tb is None else self.tb)

    def strides(self):
        return self.sh.stride(0), self.sw.stride(0), self.th.stride(0), self.tw.stride(0)

    def flags(self):
        return dict(HAS_SB=self.sb is not None, HAS_TB=self.tb is not None,
                    PREC_S=dot_precision(self.sh.dtype), PREC_T=dot_precision(self.th.dtype))

    def sweep_grid(self, n_splits):
        return lambda meta: (triton.cdiv(self.n, meta["BLOCK_N"]), n_splits)


def _merge_max_sum(m, s):
    """Merges partial online-softmax states ``[splits, n]`` -> (max, sum, weight per split)."""
    m_all = m.max(dim=0).values
    weight = torch.exp(m - m_all)
    return m_all, (s * weight).sum(dim=0), weight


def _forward(p: _Problem):
    """Per-token loss plus what the gradient pass needs: (loss, lse_s, lse_t, kl_term), with
    ``kl_term`` the per-token KL (forward; unused), ``E_{p_s}[z_s - z_t]`` (reverse) or
    ``KL(p_s||M)`` (jsd)."""
    n_splits, per_split = vocab_split(p.n, p.V)
    out = torch.empty((5, n_splits, p.n), dtype=torch.float32, device=p.sh.device)
    _stats[p.sweep_grid(n_splits)](
        *p.operands(), out, p.n, p.V, p.Hs, p.Ht, *p.strides(), p.inv_t, per_split,
        DIVERGENCE=p.div, **p.flags(), **launch_blocks(),
    )
    m_s, s_s, m_t, s_t, acc = out.unbind(0)
    ms_all, ss_all, ws = _merge_max_sum(m_s, s_s)
    mt_all, st_all, wt = _merge_max_sum(m_t, s_t)
    lse_s = ms_all + torch.log(ss_all)
    lse_t = mt_all + torch.log(st_all)
    if p.div == 0:  # E_{p_t}[z_t - z_s] - lse_t + lse_s
        loss = (acc * wt).sum(dim=0) / st_all - lse_t + lse_s
        return loss, lse_s, lse_t, loss
    if p.div == 1:  # E_{p_s}[z_s - z_t] - lse_s + lse_t
        expect = (acc * ws).sum(dim=0) / ss_all
        return expect - lse_s + lse_t, lse_s, lse_t, expect
    parts = torch.empty((2, n_splits, p.n), dtype=torch.float32, device=p.sh.device)
    _jsd[p.sweep_grid(n_splits)](
        *p.operands(), lse_s, lse_t, parts, p.n, p.V, p.Hs, p.Ht, *p.strides(), p.inv_t, per_split,
        p.log_beta, p.log_1mbeta, **p.flags(), **launch_blocks(),
    )
    kl_tm, kl_sm = parts.sum(dim=1).unbind(0)
    return p.beta * kl_tm + (1.0 - p.beta) * kl_sm, lse_s, lse_t, kl_sm


def _gradients(p: _Problem, lse_s, lse_t, kl_term, g):
    """float32 (d sh, d sw, d sb | None) for the per-token upstream gradient ``g`` [n]."""
    dev = p.sh.device
    dsh = torch.empty((p.n, p.Hs), dtype=torch.float32, device=dev)
    dsw = torch.zeros((p.sw.shape[0], p.Hs), dtype=torch.float32, device=dev)
    dsb = torch.zeros(p.sw.shape[0], dtype=torch.float32, device=dev) if p.sb is not None else None
    g = g.float().contiguous()
    sb, tb = p.operands()[2], p.operands()[5]
    consts = (p.inv_t, p.log_beta, p.log_1mbeta)
    flags = dict(DIVERGENCE=p.div, **p.flags(), **launch_blocks())

    def grid(rows):
        return lambda meta: (triton.cdiv(rows, meta["BLOCK_N"]), triton.cdiv(p.V, meta["BLOCK_V"]))

    if tiles.GRAD_STRATEGY == "atomic":
        dsh.zero_()
        _grad[grid(p.n)](
            p.sh, p.sw, sb, p.th, p.tw, tb, lse_s, lse_t, kl_term, g, p.dummy, dsh, dsw,
            p.dummy if dsb is None else dsb, p.n, p.V, p.Hs, p.Ht, *p.strides(), *consts, STORE_DZ=False, **flags,
        )
        return dsh, dsw, dsb
    rows = tiles.chunk_rows(p.n, p.V, p.sh.element_size())
    dz = torch.empty((rows, p.V), dtype=p.sh.dtype, device=dev)
    for r0 in range(0, p.n, rows):
        r1 = min(r0 + rows, p.n)
        _grad[grid(r1 - r0)](
            p.sh[r0:r1], p.sw, sb, p.th[r0:r1], p.tw, tb, lse_s[r0:r1], lse_t[r0:r1], kl_term[r0:r1], g[r0:r1],
            dz, p.dummy, p.dummy, p.dummy, r1 - r0, p.V, p.Hs, p.Ht, *p.strides(), *consts, STORE_DZ=True, **flags,
        )
        tiles.backprop_chunk(dz[: r1 - r0], p.sh[r0:r1], p.sw[: p.V], dsh[r0:r1], dsw[: p.V],
                             None if dsb is None else dsb[: p.V])
    return dsh, dsw, dsb


class _FusedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size, reduction):
        p = _Problem(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size)
        loss, lse_s, lse_t, kl_term = _forward(p)
        ctx.reduction = reduction
        ctx.dtypes = (sh.dtype, sw.dtype, None if sb is None else sb.dtype)
        if reduction == "sum":  # gradient of the sum, formed now; backward only scales it
            grads = _gradients(p, lse_s, lse_t, kl_term, torch.ones_like(loss))
            ctx.save_for_backward(*grads)
            return loss.sum()
        ctx.problem_args = (divergence, beta, temperature, vocab_size)
        ctx.save_for_backward(sh, sw, sb, th, tw, tb, lse_s, lse_t, kl_term)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.reduction == "sum":
            grads = tuple(None if gr is None else gr * grad_out for gr in ctx.saved_tensors)
        else:
            sh, sw, sb, th, tw, tb, lse_s, lse_t, kl_term = ctx.saved_tensors
            p = _Problem(sh, sw, sb, th, tw, tb, *ctx.problem_args)
            grads = _gradients(p, lse_s, lse_t, kl_term, grad_out)
        out = tuple(None if gr is None else gr.to(dt) for gr, dt in zip(grads, ctx.dtypes))
        return out + (None,) * 8


def kl(sh, sw, sb, th, tw, tb, *, divergence, beta, temperature, vocab_size, reduction):
    """Backend contract entry (see ``tcod_kernels.api``): a scalar ("mean" over the n rows, "sum")
    or [n] ("none"); float32, float64 when a hidden state is float64 (computed in float32)."""
    out_dtype = torch.float64 if torch.float64 in (sh.dtype, th.dtype) else torch.float32
    sh, sw, sb = prepare(sh), prepare(sw), prepare(sb)
    with torch.no_grad():
        th, tw, tb = prepare(th), prepare(tw), prepare(tb)
    kernel_reduction = "none" if reduction == "none" else "sum"
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (sh, sw, sb))
    if needs_grad:
        loss = _FusedKL.apply(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size, kernel_reduction)
    else:
        with torch.no_grad():
            p = _Problem(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size)
            loss = _forward(p)[0]
            loss = loss if reduction == "none" else loss.sum()
    if reduction == "mean":
        loss = loss / sh.shape[0]
    return loss.to(out_dtype)
