"""Triton backend: fused teacher-student KL and log-probs (the contract in ``tcod_kernels.api``).

* ``kl(sh, sw, sb, th, tw, tb, *, divergence, beta, temperature, vocab_size, reduction)``
  (``tcod_kernels.triton.kl``)
* ``logprobs(h, w, b, targets, *, temperature, return_entropy)`` (``tcod_kernels.triton.logprobs``)
* ``availability(device) -> (ok, reason)``

``triton.jit`` fixes at definition time whether a function runs compiled or under the CPU
interpreter, and that includes triton's own library (``tl.zeros``, the ``tl.sum`` combiners):
``TRITON_INTERPRET=1`` must be set before the first ``import triton`` for CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton  # an ImportError here tells api.py that the backend is missing

from tcod_kernels.triton.kl import kl
from tcod_kernels.triton.logprobs import logprobs

__all__ = ["availability", "kl", "logprobs"]

_INTERPRET_HINT = "set TRITON_INTERPRET=1 to run Triton kernels on the CPU interpreter"


def _built_for_interpreter() -> bool:
    """Whether triton's jit'd library was defined for the interpreter (not compiled mode)."""
    return not isinstance(triton.language.zeros, triton.runtime.JITFunction)


def availability(device: torch.device):
    """(ok, reason): CUDA when triton imports; CPU only under the Triton interpreter."""
    device = torch.device(device)
    if device.type == "cuda":
        return True, ""
    if device.type != "cpu":
        return False, f"the Triton backend runs on CUDA devices, not {device.type}"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False, _INTERPRET_HINT
    if not _built_for_interpreter():
        return False, "triton was imported before TRITON_INTERPRET=1 was set; set it before the first import of triton"
    return True, ""
