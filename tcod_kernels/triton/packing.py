"""Triton kernels for packed batches: curriculum window masks and segment sums.

Same semantics as the torch reference in ``tcod_kernels.packing`` (which validates every
input before calling here):

* ``window_mask(loss_mask bool[T], turn_ids int32[T], seq_ids int32[T], lo int64[S], hi int64[S])
  -> bool[T]``: ``loss_mask[t] and seq_ids[t] >= 0 and lo[s] <= turn_ids[t] < hi[s]``;
* ``segment_sum(values float[T], segment_ids int64[T], num_segments) -> [num_segments]``:
  float32 accumulation (float64 stays float64) with atomic adds; ids < 0 are skipped.
  Forward only: the autograd wrapper in ``tcod_kernels.packing`` does the backward gather.

Imported on first use (see ``tcod_kernels.triton``): ``triton.jit`` decides at definition
time whether the kernels run compiled or under the CPU interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_BLOCK = 1024


@triton.jit
def _window_mask_kernel(mask_ptr, turn_ptr, seq_ptr, lo_ptr, hi_ptr, out_ptr, T, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < T
    m = tl.load(mask_ptr + offs, mask=inb, other=0)
    turn = tl.load(turn_ptr + offs, mask=inb, other=0).to(tl.int64)
    seq = tl.load(seq_ptr + offs, mask=inb, other=-1)
    valid = inb & (m != 0) & (seq >= 0)
    lo = tl.load(lo_ptr + seq, mask=valid, other=0)
    hi = tl.load(hi_ptr + seq, mask=valid, other=0)
    keep = valid & (lo <= turn) & (turn < hi)
    tl.store(out_ptr + offs, keep.to(tl.uint8), mask=inb)


@triton.jit
def _segment_sum_kernel(val_ptr, seg_ptr, out_ptr, T, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < T
    seg = tl.load(seg_ptr + offs, mask=inb, other=-1)
    keep = inb & (seg >= 0)
    v = tl.load(val_ptr + offs, mask=keep, other=0.0).to(out_ptr.dtype.element_ty)
    tl.atomic_add(out_ptr + seg, v, mask=keep, sem="relaxed")


def _check_mode(t: torch.Tensor):
    if t.device.type == "cpu" and not INTERPRET:
        raise RuntimeError(
            "tcod_kernels.triton.packing was imported without TRITON_INTERPRET=1, so its kernels "
            "cannot run on CPU tensors; set TRITON_INTERPRET=1 before the first use"
        )


def window_mask(loss_mask, turn_ids, seq_ids, lo, hi) -> torch.Tensor:
    """Curriculum window mask over flat, contiguous, checked inputs (bool [T])."""
    _check_mode(loss_mask)
    T = loss_mask.numel()
    out = torch.empty(T, dtype=torch.uint8, device=loss_mask.device)
    if T:
        grid = (triton.cdiv(T, _BLOCK),)
        _window_mask_kernel[grid](loss_mask.view(torch.uint8), turn_ids, seq_ids, lo, hi, out, T, BLOCK=_BLOCK)
    return out.view(torch.bool)


def segment_sum(values, segment_ids, num_segments: int) -> torch.Tensor:
    """Segment sums of flat, contiguous, checked inputs; float32 (float64 for float64)."""
    _check_mode(values)
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    out = torch.zeros(num_segments, dtype=dtype, device=values.device)
    T = values.numel()
    if T and num_segments:
        grid = (triton.cdiv(T, _BLOCK),)
        _segment_sum_kernel[grid](values, segment_ids, out, T, BLOCK=_BLOCK)
    return out
