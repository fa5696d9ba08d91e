"""Shared Triton building blocks: one logits tile, the back-propagation of gradient tiles,
and the launch settings (interpreter vs GPU autotuning, vocabulary splits).

Layout conventions (the Python wrappers guarantee them): hidden ``[n, H]`` and weight
``[V, H]`` are row-major with unit stride along ``H``; row offsets are formed in int64 so
that ``n * H`` and ``V * H`` beyond 2^31 elements stay correct.

Gradient accumulation (DESIGN.md section 3). A gradient kernel recomputes the logits tile of
one ``(token block, vocab block)`` and forms ``dz = dL/dlogits`` in float32; then, by
``GRAD_STRATEGY``:

* ``"chunked"`` (default): the kernel stores ``dz`` (in the input dtype) for a chunk of at most
  ``DZ_CHUNK_BYTES`` of rows x vocab, and two dense GEMMs (cuBLAS through PyTorch) form
  ``d hidden = dz @ W`` for the chunk and add ``dz^T @ h`` into a float32 ``d weight``. Only a
  bounded ``[rows, V]`` chunk exists at a time, the GEMMs run at library speed, and the result
  is deterministic.
* ``"atomic"``: the kernel adds ``dz @ W`` into ``d hidden`` and ``dz^T @ h`` into ``d weight``
  with float32 atomics, one ``BLOCK_K`` slice of the hidden width at a time (no ``dz`` buffer at
  all). Its atomic traffic is ``(n / BLOCK_N) V H + (V / BLOCK_V) n H`` floats, large at LLM
  shapes; the summation order is not deterministic (differences at float32 rounding).

Select with ``TCOD_TRITON_GRAD=atomic|chunked`` or by setting ``GRAD_STRATEGY``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether the kernels of this process are built for the Triton CPU interpreter
(``triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is defined)."""

# The interpreter (triton 3.9) multiplies bfloat16 tiles as their raw 16-bit integers in
# ``tl.dot``; there the operands are widened to float32 first, which gives the same result as
# the GPU's exact bf16 products with float32 accumulation.
DOT_UPCAST = tl.constexpr(INTERPRET)

# Block sizes used under the interpreter: small, so that tiny test shapes still run several
# token tiles, vocab tiles (with a partial last one) and hidden-width slices.
INTERPRET_BLOCKS = dict(BLOCK_N=16, BLOCK_V=32, BLOCK_K=16)

# Every vocab split is a multiple of this many columns, so that a split holds whole tiles
# for any autotuned BLOCK_V (all of them divide it).
SPLIT_ALIGN = 256


GRAD_STRATEGY = os.environ.get("TCOD_TRITON_GRAD", "chunked")
DZ_CHUNK_BYTES = 1 << 30
"""Largest ``dz`` chunk of the "chunked" gradient strategy (under the interpreter: 16 rows)."""


def chunk_rows(n_rows: int, vocab: int, elem_bytes: int) -> int:
    """Rows per ``dz`` chunk: a multiple of 128 within ``DZ_CHUNK_BYTES`` (16 under the interpreter)."""
    if INTERPRET:
        return 16
    rows = max(128, DZ_CHUNK_BYTES // (vocab * elem_bytes) // 128 * 128)
    return min(rows, n_rows)


def backprop_chunk(dz, h, w, dh, dw, db):
    """Chunked strategy: ``dh = dz @ w``, ``dw += dz^T @ h``, ``db += sum_rows dz`` for one chunk.

    ``dz`` is ``[rows, V]`` in the input dtype, ``w`` the first ``V`` weight rows; ``dh`` is the
    chunk's float32 rows, ``dw``/``db`` the float32 accumulators of the first ``V`` rows.
    """
    dh.copy_(dz @ w)
    dw += dz.t() @ h  # GEMM in the input dtype (fp32 accumulate), summed over chunks in float32
    if db is not None:
        db += dz.sum(dim=0, dtype=torch.float32)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: exact float32 products for float32 inputs (no TF32)."""
    return "ieee" if dtype == torch.float32 else "tf32"


def vocab_split(n_rows: int, vocab: int, rows_per_block: int = 64, target_programs: int = 264):
    """(number of splits, columns per split) for a sweep over the vocabulary.

    With few tokens the token blocks alone cannot fill the GPU, so the vocabulary is cut
    into splits, each program reduces its own range to a partial ``(max, sum)`` state, and
    a small combine in PyTorch merges them. Under the interpreter the split is two tiles
    wide so that the combine is exercised by small test shapes.
    """
    if INTERPRET:
        per_split = 2 * INTERPRET_BLOCKS["BLOCK_V"]
    else:
        token_blocks = triton.cdiv(n_rows, rows_per_block)
        want = max(1, triton.cdiv(target_programs, token_blocks))
        per_split = triton.cdiv(triton.cdiv(vocab, want), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(vocab, per_split), per_split


def prepare(t):
    """Row-major with unit inner stride; float64 is computed in float32 (the cast is differentiable)."""
    if t is None:
        return None
    if t.dtype == torch.float64:
        t = t.float()
    return t.contiguous()


AUTOTUNE = os.environ.get("TCOD_TRITON_AUTOTUNE", "1") != "0"
"""``TCOD_TRITON_AUTOTUNE=0`` launches the first config of each list without benchmarking
(quick GPU test runs: every autotuned config is a separate compilation)."""


def tuned(kernel, configs, key, reset_to_zero=None):
    """``kernel`` autotuned over ``configs`` on a GPU; unchanged under the interpreter."""
    if INTERPRET:
        return kernel
    configs = configs if AUTOTUNE else configs[:1]
    return triton.autotune(configs=configs, key=key, reset_to_zero=reset_to_zero)(kernel)


def launch_blocks():
    """Explicit block sizes for a launch: the interpreter's, or none (the autotuner picks)."""
    return dict(INTERPRET_BLOCKS) if INTERPRET else {}


def configs(shapes):
    """``triton.Config`` list from ``(BLOCK_N, BLOCK_V, BLOCK_K, num_warps, num_stages)``."""
    return [
        triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_K=bk), num_warps=w, num_stages=s)
        for bn, bv, bk, w, s in shapes
    ]


# Sized for Hopper (H100/H200, 228 KB shared memory) and Ampere (A100, 164 KB). Compiled for
# sm_90 with triton 3.9 (ptxas ships with triton, no GPU needed), with the divisibility-by-16
# specialization a real launch gets (``python -m tcod_kernels.triton.compile_check``): all
# pipeline their loads (cp.async); the bf16 defaults use 100-235 registers and no stack (the
# float32 "ieee" and atomic variants spill a little); 64x128x64 with 4 warps and 64x256x64
# spilled hundreds of bytes, so they are not here.
# The first config of each list is the untuned default (TCOD_TRITON_AUTOTUNE=0).
#
# Sweep kernels: one token block, a loop over vocab tiles, two logits tiles alive at once.
SWEEP_CONFIGS = configs([
    (64, 128, 32, 8, 3),
    (128, 64, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (64, 64, 64, 4, 3),
])
# Gradient kernels: one (token block, vocab block) tile, two logits GEMMs, then a dz store or
# (atomic strategy) two more GEMMs with atomics.
GRAD_CONFIGS = configs([
    (64, 128, 32, 8, 3),
    (128, 64, 64, 8, 3),
    (128, 128, 32, 8, 4),
    (64, 64, 64, 4, 3),
])


@triton.jit
def logits_tile(h_ptr, w_ptr, b_ptr, offs_n, offs_v, n_rows, n_cols, width, stride_h, stride_w, inv_t,
                HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr,
                PRECISION: tl.constexpr):
    """``z = (h @ w.T + b) / T`` for one ``[BLOCK_N, BLOCK_V]`` tile, float32.

    Columns ``>= n_cols`` are ``-inf`` (they carry no probability). Rows ``>= n_rows`` are
    finite garbage that callers mask out.
    """
    row_ok = offs_n < n_rows
    col_ok = offs_v < n_cols
    h_rows = h_ptr + offs_n.to(tl.int64)[:, None] * stride_h
    w_rows = w_ptr + offs_v.to(tl.int64)[None, :] * stride_w
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, width, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < width
        h = tl.load(h_rows + offs_k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_rows + offs_k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if DOT_UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_v, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return tl.where(col_ok[None, :], acc * inv_t, float("-inf"))


@triton.jit
def backprop_tile(dz, h_ptr, w_ptr, dh_ptr, dw_ptr, db_ptr, offs_n, offs_v, n_rows, n_cols, width,
                  stride_h, stride_w, HAS_BIAS: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """Adds ``dz @ w`` to ``dh``, ``dz^T @ h`` to ``dw`` and ``sum_n dz`` to ``db`` (float32 atomics).

    ``dz`` is the float32 gradient w.r.t. the logits tile, zero outside valid rows/columns.
    ``dh`` is ``[n, width]`` and ``dw`` is ``[V, width]``, both float32 and contiguous. For
    16-bit inputs ``dz`` is rounded to the input dtype before the tensor-core GEMMs.
    """
    row_ok = offs_n < n_rows
    col_ok = offs_v < n_cols
    if HAS_BIAS:
        tl.atomic_add(db_ptr + offs_v, tl.sum(dz, axis=0), mask=col_ok)
    h_rows = offs_n.to(tl.int64)[:, None]
    w_rows = offs_v.to(tl.int64)[:, None]
    dz_in = dz.to(h_ptr.dtype.element_ty)
    if DOT_UPCAST:
        dz_in = dz_in.to(tl.float32)
    dz_t = tl.trans(dz_in)
    for k0 in range(0, width, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < width
        h_mask = row_ok[:, None] & k_ok[None, :]
        w_mask = col_ok[:, None] & k_ok[None, :]
        h = tl.load(h_ptr + h_rows * stride_h + offs_k[None, :], mask=h_mask, other=0.0)
        w = tl.load(w_ptr + w_rows * stride_w + offs_k[None, :], mask=w_mask, other=0.0)
        if DOT_UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        tl.atomic_add(dh_ptr + h_rows * width + offs_k[None, :], tl.dot(dz_in, w, input_precision=PRECISION),
                      mask=h_mask)
        tl.atomic_add(dw_ptr + w_rows * width + offs_k[None, :], tl.dot(dz_t, h, input_precision=PRECISION),
                      mask=w_mask)


@triton.jit
def store_dz(dz, dz_ptr, offs_n, offs_v, n_rows, n_cols):
    """Chunked strategy: ``dz`` into the row-major ``[n_rows, n_cols]`` buffer (its dtype)."""
    mask = (offs_n < n_rows)[:, None] & (offs_v < n_cols)[None, :]
    ptrs = dz_ptr + offs_n.to(tl.int64)[:, None] * n_cols + offs_v[None, :]
    tl.store(ptrs, dz.to(dz_ptr.dtype.element_ty), mask=mask)


@triton.jit
def logaddexp(a, b):
    """``log(exp(a) + exp(b))`` without overflow; ``-inf`` when both are ``-inf``."""
    m = tl.maximum(a, b)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    return m_safe + tl.log(tl.exp(a - m_safe) + tl.exp(b - m_safe))
