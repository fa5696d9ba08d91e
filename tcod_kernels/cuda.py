"""The ``cuda`` backend: the compiled csrc/ extension (``torch.ops.tcod_kernels.*``).

Loading, on first use on a CUDA device only:

1. the extension built at install time (``tcod_kernels/_C*.so``, see setup.py);
2. else a JIT build of the CUDA sources with ``torch.utils.cpp_extension.load`` when torch
   has CUDA and nvcc is found (cached by torch under ``$TORCH_EXTENSIONS_DIR``, default
   ``~/.cache/torch_extensions``; ``TCOD_CUDA_JIT=0`` disables it). The sources ship inside
   the package as ``tcod_kernels/_csrc`` (or are read from the repository's ``csrc/``).

Importing this module is cheap and never raises; :func:`availability` says why the backend
cannot run. It implements the backend contract of :mod:`tcod_kernels.api` (``kl``,
``logprobs``) and the packing kernels (``window_mask``, ``segment_sum``).

Tiling: the ops sweep ``[chunk_rows, vocab_tile]`` fp32 logits tiles. By default the tile
buffers take about ``TCOD_CUDA_TILE_MB`` (1024) MiB, keeping the whole vocabulary in one
tile when that leaves at least 256 rows per chunk (then nothing is recomputed between
passes). ``TCOD_CUDA_CHUNK_ROWS`` / ``TCOD_CUDA_VOCAB_TILE`` override either size.
"""

from __future__ import annotations

import importlib.machinery
import math
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch

DIVERGENCE_CODES = {"forward": 0, "reverse": 1, "jsd": 2}
_PACKAGE_DIR = Path(__file__).resolve().parent
_JIT_NAME = "tcod_kernels_cuda"
_MIN_FULL_VOCAB_ROWS = 256

_lock = threading.Lock()
_load_result: Optional[Tuple[bool, str]] = None  # (loaded, reason) once tried


# --------------------------------------------------------------------------- loading


def source_dir() -> Optional[Path]:
    """Folder holding the extension's sources: the packaged copy, else the repo's csrc/."""
    for candidate in (_PACKAGE_DIR / "_csrc", _PACKAGE_DIR.parent / "csrc"):
        if (candidate / "register.cpp").is_file():
            return candidate
    return None


def _prebuilt_library() -> Optional[Path]:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = _PACKAGE_DIR / f"_C{suffix}"
        if path.is_file():
            return path
    return None


def _find_nvcc() -> Optional[str]:
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME and (Path(CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _jit_build() -> Tuple[bool, str]:
    if os.environ.get("TCOD_CUDA_JIT", "1") == "0":
        return False, "the tcod_kernels CUDA extension is not built and TCOD_CUDA_JIT=0 disables the JIT build"
    if torch.version.cuda is None:
        return False, "the tcod_kernels CUDA extension is not built and torch is a CPU-only build"
    if _find_nvcc() is None:
        return False, "the tcod_kernels CUDA extension is not built and nvcc was not found"
    src = source_dir()
    if src is None:
        return False, "the tcod_kernels CUDA extension is not built and its sources (csrc/) are missing"
    from torch.utils.cpp_extension import load

    sources = sorted(str(p) for p in src.iterdir() if p.suffix in (".cpp", ".cu"))
    print(
        "tcod_kernels: compiling the CUDA extension with nvcc (first use only, a minute or two; "
        "cached under $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions)",
        file=sys.stderr,
    )
    try:
        load(name=_JIT_NAME, sources=sources, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
             is_python_module=False, verbose=os.environ.get("TCOD_CUDA_VERBOSE") == "1")
    except Exception as exc:  # a failed compile must not break the other backends
        return False, f"the JIT build of the tcod_kernels CUDA extension failed ({type(exc).__name__}: {exc})"
    return True, ""


def _load() -> Tuple[bool, str]:
    """Loads the extension once (prebuilt, else JIT); returns (loaded, reason if not)."""
    global _load_result
    if _load_result is not None:
        return _load_result
    with _lock:
        if _load_result is None:
            prebuilt, why = _prebuilt_library(), ""
            if prebuilt is not None:
                try:
                    torch.ops.load_library(str(prebuilt))
                    _load_result = (True, "")
                except (OSError, RuntimeError) as exc:
                    why = f" (the prebuilt {prebuilt.name} did not load: {exc})"
            if _load_result is None:
                ok, reason = _jit_build()
                _load_result = (ok, reason + why)
            if _load_result[0]:
                register_fakes()
    return _load_result


def availability(device) -> Tuple[bool, str]:
    """(True, "") on a CUDA device where the extension loads, else (False, reason)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"the cuda backend runs on CUDA devices only, not {device.type}"
    if not torch.cuda.is_available():
        return False, "torch cannot use a CUDA device here"
    return _load()


# --------------------------------------------------------------------------- fake kernels


def _empty(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty((0,))


def _linear_grads(grad_mask, hidden, weight, bias):
    """Shapes of (d hidden, d weight, d bias) as the C++ ops return them."""
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if grad_mask[0] else _empty(hidden),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if grad_mask[1] else _empty(hidden),
        torch.empty_like(bias) if grad_mask[2] and bias is not None else _empty(hidden),
    )


def _fake_kl_forward(sh, sw, sb, th, tw, tb, divergence, beta, temperature, vocab_size, grad_mask,
                     chunk_rows, vocab_tile):
    n = sh.shape[0]
    return (sh.new_empty((n,), dtype=torch.float32), sh.new_empty((3, n), dtype=torch.float32),
            *_linear_grads(grad_mask, sh, sw, sb))


def _fake_kl_backward(grad_rows, sh, sw, sb, th, tw, tb, stats, divergence, beta, temperature, vocab_size,
                      grad_mask, chunk_rows, vocab_tile):
    return _linear_grads(grad_mask, sh, sw, sb)


def _fake_logprobs_forward(h, w, b, targets, temperature, chunk_rows, vocab_tile):
    n = h.shape[0]
    return tuple(h.new_empty((n,), dtype=torch.float32) for _ in range(3))


def _fake_logprobs_backward(grad_logp, grad_entropy, h, w, b, targets, lse, entropy, temperature, grad_mask,
                            chunk_rows, vocab_tile):
    return _linear_grads(grad_mask, h, w, b)


def _fake_window_mask(loss_mask, turn_ids, seq_ids, lo, hi):
    return torch.empty_like(loss_mask)


def _fake_segment_sum(values, segment_ids, num_segments):
    return values.new_empty((num_segments,))


FAKES = {
    "kl_forward": _fake_kl_forward,
    "kl_backward": _fake_kl_backward,
    "logprobs_forward": _fake_logprobs_forward,
    "logprobs_backward": _fake_logprobs_backward,
    "window_mask": _fake_window_mask,
    "segment_sum": _fake_segment_sum,
}


def register_fakes(namespace: str = "tcod_kernels") -> None:
    """Registers the fake (shape-only) kernels so torch.compile can trace around the ops."""
    for name, fn in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}")(fn)


# --------------------------------------------------------------------------- tiling


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if not value:
        return None
    n = int(value)
    if n <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return n


def tile_geometry(rows: int, vocab: int, bytes_per_element: int, budget_bytes: Optional[int] = None) -> Tuple[int, int]:
    """``(chunk_rows, vocab_tile)`` for a sweep whose tile buffers cost ``bytes_per_element``.

    With E = budget / bytes_per_element elements: everything in one tile when rows * vocab
    fits; else the full vocabulary with E // vocab rows (a multiple of 16) when that is at
    least 256 rows, so no pass recomputes the logits; else square-ish tiles of about
    sqrt(E) rows (vocab tiles a multiple of 128) that balance the fp32 traffic of the dh
    and dW accumulators.
    """
    if budget_bytes is None:
        budget_bytes = (_env_int("TCOD_CUDA_TILE_MB") or 1024) << 20
    elems = max(budget_bytes // bytes_per_element, 1)
    rows, vocab = max(rows, 1), max(vocab, 1)
    if rows * vocab <= elems:
        chunk, tile = rows, vocab
    elif elems // vocab >= _MIN_FULL_VOCAB_ROWS:
        chunk, tile = (elems // vocab) // 16 * 16, vocab
    else:
        chunk = min(rows, max(16, math.isqrt(elems) // 16 * 16))
        tile = min(vocab, max(128, (elems // chunk) // 128 * 128))
    return _env_int("TCOD_CUDA_CHUNK_ROWS") or chunk, _env_int("TCOD_CUDA_VOCAB_TILE") or tile


def _copy_bytes(dtype: torch.dtype) -> int:
    """Bytes per element of the gradient tile's copy in the input dtype (none for fp32)."""
    return 0 if dtype == torch.float32 else torch.empty((), dtype=dtype).element_size()


# --------------------------------------------------------------------------- autograd


def _ops():
    return torch.ops.tcod_kernels


def _result_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 results, float64 for float64 inputs (the tiles' math is float32 either way)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class _FusedKL(torch.autograd.Function):
    """Divergence per row (reduction "none"), summed ("sum") or averaged over the rows
    ("mean"); gradients to sh, sw, sb.

    "sum"/"mean" form the gradients during the forward sweep (no recompute; backward scales
    them by grad_output); "none" keeps per-row stats and redoes one sweep in backward.
    """

    @staticmethod
    def forward(ctx, sh, sw, sb, th, tw, tb, div_code, beta, temperature, vocab_size, reduction, chunk, tile,
                grad_enabled):
        # needs_input_grad is also True under torch.no_grad(): grad_enabled (the caller's
        # grad mode) keeps "sum" from forming gradients nobody will read.
        need = [grad_enabled and n for n in ctx.needs_input_grad[:3]]
        mask = [need[0], need[1], sb is not None and need[2]]
        ctx.reduction, ctx.mask = reduction, mask
        ctx.args = (div_code, beta, temperature, vocab_size)
        ctx.geometry = (chunk, tile)
        out_dtype = _result_dtype(sh)
        if reduction in ("sum", "mean"):
            loss, _, dsh, dsw, dsb = _ops().kl_forward(sh, sw, sb, th, tw, tb, div_code, beta, temperature,
                                                       vocab_size, mask, chunk, tile)
            ctx.save_for_backward(dsh, dsw, dsb)
            ctx.scale = 1.0 / sh.shape[0] if reduction == "mean" else 1.0
            return (loss.sum() * ctx.scale).to(out_dtype)
        loss, stats, *_ = _ops().kl_forward(sh, sw, sb, th, tw, tb, div_code, beta, temperature, vocab_size,
                                            [False, False, False], chunk, tile)
        ctx.save_for_backward(sh, sw, sb, th, tw, tb, stats)
        return loss.to(out_dtype)

    @staticmethod
    def backward(ctx, grad):
        if ctx.reduction != "none":
            grads = [g * (grad * ctx.scale).to(g.dtype) if m else None for g, m in zip(ctx.saved_tensors, ctx.mask)]
        else:
            sh, sw, sb, th, tw, tb, stats = ctx.saved_tensors
            out = _ops().kl_backward(grad.float().contiguous(), sh, sw, sb, th, tw, tb, stats, *ctx.args,
                                     ctx.mask, *ctx.geometry)
            grads = [g if m else None for g, m in zip(out, ctx.mask)]
        return (*grads,) + (None,) * 11


class _FusedLogprobs(torch.autograd.Function):
    """(logp, entropy) per row; gradients to h, w, b from either output."""

    @staticmethod
    def forward(ctx, h, w, b, targets, temperature, chunk, tile):
        ctx.set_materialize_grads(False)
        logp, entropy, lse = _ops().logprobs_forward(h, w, b, targets, temperature, chunk, tile)
        ctx.save_for_backward(h, w, b, targets, lse, entropy)
        ctx.mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2]]
        ctx.args = (temperature, chunk, tile)
        return logp.to(_result_dtype(h)), entropy.to(_result_dtype(h))

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        h, w, b, targets, lse, entropy = ctx.saved_tensors
        if grad_logp is None and grad_entropy is None:
            return (None,) * 7
        temperature, chunk, tile = ctx.args
        out = _ops().logprobs_backward(grad_logp, grad_entropy, h, w, b, targets, lse, entropy, temperature,
                                       ctx.mask, chunk, tile)
        return tuple(g if m else None for g, m in zip(out, ctx.mask)) + (None,) * 4


# --------------------------------------------------------------------------- backend contract


def kl(sh, sw, sb, th, tw, tb, *, divergence, beta, temperature, vocab_size, reduction):
    """Backend contract of :func:`tcod_kernels.fused_kl` (see tcod_kernels.api)."""
    per_element = 8 + _copy_bytes(sh.dtype)  # student + teacher fp32 tiles + dz copy
    chunk, tile = tile_geometry(sh.shape[0], vocab_size, per_element)
    return _FusedKL.apply(sh, sw, sb, th, tw, tb, DIVERGENCE_CODES[divergence], float(beta), float(temperature),
                          int(vocab_size), reduction, chunk, tile, torch.is_grad_enabled())


def logprobs(h, w, b, targets, *, temperature, return_entropy):
    """Backend contract of :func:`tcod_kernels.fused_logprobs` (see tcod_kernels.api)."""
    chunk, tile = tile_geometry(h.shape[0], w.shape[0], 4 + _copy_bytes(h.dtype))
    logp, entropy = _FusedLogprobs.apply(h, w, b, targets.long(), float(temperature), chunk, tile)
    return (logp, entropy) if return_entropy else logp


def window_mask(loss_mask, turn_ids, seq_ids, lo, hi):
    """bool [T]: loss_mask & seq_ids >= 0 & lo[seq] <= turn < hi[seq] (flat inputs, see packing)."""
    return _ops().window_mask(loss_mask, turn_ids.int(), seq_ids.int(), lo.long(), hi.long())


def segment_sum(values, segment_ids, num_segments):
    """Per-segment sums in float32 (float64 stays float64); ids < 0 ignored. Forward only."""
    if values.dtype != torch.float64:
        values = values.float()
    return _ops().segment_sum(values, segment_ids.long(), int(num_segments))
