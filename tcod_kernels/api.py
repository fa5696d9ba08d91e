"""Public kernel API: argument checks and backend dispatch.

This is the ONE place where inputs are validated (DESIGN.md section 3). Backends receive
flat, checked, mask-compacted tensors and never re-validate:

* hidden states are flattened to ``[N, H]``;
* masked tokens (``mask`` False, or target ``-100``) are dropped *before* any kernel runs,
  so backends only see counted rows;
* ``reduction="mean"`` is over the counted rows the backend receives.

Backend contract (each of ``torch_backend``, ``triton``, ``cuda`` implements it)::

    kl(sh, sw, sb, th, tw, tb, *, divergence, beta, temperature, vocab_size, reduction)
        sh [n, Hs], sw [Vs, Hs], sb [Vs] | None, th [n, Ht], tw [Vt, Ht], tb [Vt] | None
        reduction "mean" | "sum" -> scalar, "none" -> [n], float32 (float64 for float64
        inputs); "mean" divides the sum by n (the rows passed); differentiable in
        sh, sw, sb (teacher tensors are constants).
    logprobs(h, w, b, targets, *, temperature, return_entropy)
        h [n, H], w [V, H], b [V] | None, targets long [n] in [0, V)
        -> float32 [n] (or a pair (logp, entropy)); differentiable in h, w, b.
"""

from __future__ import annotations

import importlib
from typing import Optional

import torch

DIVERGENCES = ("forward", "reverse", "jsd")
REDUCTIONS = ("mean", "sum", "none")
BACKENDS = ("auto", "torch", "triton", "cuda")
IGNORE_INDEX = -100
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


# --------------------------------------------------------------------------- checks


def _check_tensor(name: str, t, *, ndim: Optional[int] = None, min_ndim: Optional[int] = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float32, bfloat16, float16 or float64), got {t.dtype}"
        )
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(t.shape)}")


def _check_linear(prefix: str, hidden, weight, bias):
    """Checks one model's (hidden, weight, bias) triple; returns (V, H)."""
    _check_tensor(f"{prefix}hidden", hidden, min_ndim=1)
    _check_tensor(f"{prefix}weight", weight, ndim=2)
    V, H = weight.shape
    if V == 0:
        raise ValueError(f"{prefix}weight must have at least one vocabulary row, got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != H:
        raise ValueError(
            f"{prefix}hidden width {hidden.shape[-1]} does not match {prefix}weight width {H} "
            f"(weight is [vocab, hidden] = {tuple(weight.shape)})"
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"{prefix}hidden dtype {hidden.dtype} differs from {prefix}weight dtype {weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"{prefix}hidden is on {hidden.device} but {prefix}weight is on {weight.device}")
    if bias is not None:
        _check_tensor(f"{prefix}bias", bias, ndim=1)
        if bias.shape[0] != V:
            raise ValueError(f"{prefix}bias must have shape [{V}] to match {prefix}weight, got {tuple(bias.shape)}")
        if bias.device != weight.device:
            raise ValueError(f"{prefix}bias is on {bias.device} but {prefix}weight is on {weight.device}")
    return V, H


def _check_temperature(temperature):
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not (temperature > 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    return float(temperature)


def _check_mask(mask, lead_shape, device):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool, got {mask.dtype}")
    if tuple(mask.shape) != tuple(lead_shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the leading shape of the hidden states {tuple(lead_shape)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but the hidden states are on {device}")
    return mask


def _resolve_backend(backend, device: torch.device):
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "torch" if device.type != "cuda" else available_backends(device)[0]
    if backend not in _supported_backends(device):
        raise ValueError(
            f"backend={backend!r} is not available on {device}: {_unavailable_reason(backend, device)}. "
            f"Available: {available_backends(device)}"
        )
    return backend


# --------------------------------------------------------------------------- backends


def _backend_module(name: str):
    module = {"torch": "tcod_kernels.torch_backend", "triton": "tcod_kernels.triton", "cuda": "tcod_kernels.cuda"}[name]
    return importlib.import_module(module)


def _probe(name: str, device: torch.device):
    """(ok, reason) for a backend on a device."""
    if name == "torch":
        return True, ""
    try:
        mod = _backend_module(name)
    except ImportError as exc:  # the backend's package (triton) or module is missing
        return False, f"it could not be imported ({exc})"
    return mod.availability(device)


def _supported_backends(device: torch.device):
    return [name for name in ("triton", "cuda", "torch") if _probe(name, device)[0]]


def _unavailable_reason(name: str, device: torch.device) -> str:
    return _probe(name, device)[1]


def available_backends(device="cpu") -> list:
    """Backends that can run on ``device``, fastest first (the first is what "auto" picks).

    CPU: ``["torch"]`` plus ``"triton"`` when ``TRITON_INTERPRET=1`` (the interpreter, for
    tests; never picked by "auto" on CPU). CUDA: triton and cuda where they load, then torch.
    """
    device = torch.device(device)
    names = _supported_backends(device)
    if device.type != "cuda":  # the interpreter is for tests: "auto" stays on torch
        names = ["torch"] + [n for n in names if n != "torch"]
    return names


# --------------------------------------------------------------------------- helpers


class _ZeroLoss(torch.autograd.Function):
    """A float32 (float64 for float64 inputs) zero of a given shape whose gradients are zeros (never NaN, never None)."""

    @staticmethod
    def forward(ctx, shape, *tensors):
        ctx.specs = [(t.shape, t.dtype, t.device) if isinstance(t, torch.Tensor) else None for t in tensors]
        first = next(t for t in tensors if isinstance(t, torch.Tensor))
        dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        return torch.zeros(shape, dtype=dtype, device=first.device)

    @staticmethod
    def backward(ctx, grad):
        return (None,) + tuple(
            None if s is None else torch.zeros(s[0], dtype=s[1], device=s[2]) for s in ctx.specs
        )


def _scatter_rows(values: torch.Tensor, index: Optional[torch.Tensor], n_total: int) -> torch.Tensor:
    if index is None:
        return values
    out = values.new_zeros(n_total)
    return out.index_put((index,), values)


# --------------------------------------------------------------------------- public API


def fused_kl(
    student_hidden,
    student_weight,
    teacher_hidden,
    teacher_weight,
    *,
    student_bias=None,
    teacher_bias=None,
    divergence: str = "reverse",
    beta: float = 0.5,
    temperature: float = 1.0,
    mask=None,
    vocab_size: Optional[int] = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Teacher-student divergence per token, straight from hidden states and lm_head weights.

    With ``z = (hidden @ weight.T + bias) / temperature`` restricted to the first
    ``vocab_size`` columns, ``log p = log_softmax(z)``:

    * ``"forward"``: ``KL(p_t || p_s) = sum_v p_t (log p_t - log p_s)``
    * ``"reverse"``: ``KL(p_s || p_t) = sum_v p_s (log p_s - log p_t)``
    * ``"jsd"``:     ``beta KL(p_t || M) + (1 - beta) KL(p_s || M)``, ``M = beta p_t + (1 - beta) p_s``

    Gradients flow to the student hidden states, weight and bias; the teacher is a constant.
    Returns float32 (float64 when the inputs are float64, e.g. for gradcheck): a scalar for "mean"/"sum", the leading shape for "none" (0 where masked).
    """
    _check_linear("student_", student_hidden, student_weight, student_bias)
    _check_linear("teacher_", teacher_hidden, teacher_weight, teacher_bias)
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(
            f"teacher_hidden leading shape {tuple(teacher_hidden.shape[:-1])} must equal "
            f"student_hidden leading shape {tuple(lead)}"
        )
    device = student_hidden.device
    if teacher_hidden.device != device:
        raise ValueError(f"teacher_hidden is on {teacher_hidden.device} but student_hidden is on {device}")
    Vs, Vt = student_weight.shape[0], teacher_weight.shape[0]
    if vocab_size is None:
        if Vs != Vt:
            raise ValueError(
                f"vocab_size is required when the student vocabulary ({Vs}) differs from the teacher's ({Vt})"
            )
        vocab_size = Vs
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int or None, got {type(vocab_size).__name__}")
    if not 0 < vocab_size <= min(Vs, Vt):
        raise ValueError(f"vocab_size must be in [1, min(Vs, Vt) = {min(Vs, Vt)}], got {vocab_size}")
    if not isinstance(divergence, str) or divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "jsd":
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"beta must be a number, got {type(beta).__name__}")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in the open interval (0, 1) for divergence='jsd', got {beta}")
    temperature = _check_temperature(temperature)
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = _check_mask(mask, lead, device)
    name = _resolve_backend(backend, device)

    sh = student_hidden.reshape(-1, student_hidden.shape[-1])
    th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    n_total = sh.shape[0]
    index = None
    if mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(1)
        if index.numel() < n_total:
            sh, th = sh.index_select(0, index), th.index_select(0, index)
        else:
            index = None
    count = sh.shape[0]
    if count == 0:
        shape = () if reduction != "none" else tuple(lead)
        return _ZeroLoss.apply(shape, student_hidden, student_weight, student_bias)

    out = _backend_module(name).kl(
        sh, student_weight, student_bias, th, teacher_weight, teacher_bias,
        divergence=divergence, beta=float(beta), temperature=temperature, vocab_size=vocab_size,
        reduction=reduction,
    )
    if reduction != "none":
        return out
    return _scatter_rows(out, index, n_total).reshape(lead)


def fused_logprobs(
    hidden,
    weight,
    targets,
    *,
    bias=None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: str = "auto",
):
    """``log softmax((hidden @ weight.T + bias) / temperature)[target]`` per token, float32
    (float64 when the inputs are float64).

    Targets equal to -100 are ignored: their log-prob (and entropy) is 0 with no gradient.
    With ``return_entropy=True`` also returns ``H = -sum_v p log p`` of the same distribution.
    """
    _check_linear("", hidden, weight, bias)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"targets must be an integer tensor, got {targets.dtype}")
    lead = hidden.shape[:-1]
    if tuple(targets.shape) != tuple(lead):
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal the leading shape of hidden {tuple(lead)}")
    if targets.device != hidden.device:
        raise ValueError(f"targets is on {targets.device} but hidden is on {hidden.device}")
    V = weight.shape[0]
    flat_targets = targets.reshape(-1).long()
    valid = flat_targets != IGNORE_INDEX
    bad = valid & ((flat_targets < 0) | (flat_targets >= V))
    if bool(bad.any()):
        first = int(flat_targets[bad][0])
        raise ValueError(f"targets must be in [0, {V}) or -100 (ignored), found {first}")
    temperature = _check_temperature(temperature)
    if not isinstance(return_entropy, bool):
        raise TypeError(f"return_entropy must be a bool, got {type(return_entropy).__name__}")
    name = _resolve_backend(backend, hidden.device)

    h = hidden.reshape(-1, hidden.shape[-1])
    n_total = h.shape[0]
    index = None
    if not bool(valid.all()):
        index = valid.nonzero().squeeze(1)
        h, flat_targets = h.index_select(0, index), flat_targets.index_select(0, index)
    if h.shape[0] == 0:
        zero = _ZeroLoss.apply(tuple(lead), hidden, weight, bias)
        return (zero, _ZeroLoss.apply(tuple(lead), hidden, weight, bias)) if return_entropy else zero

    out = _backend_module(name).logprobs(
        h, weight, bias, flat_targets, temperature=temperature, return_entropy=return_entropy
    )
    if return_entropy:
        logp, entropy = out
        return _scatter_rows(logp, index, n_total).reshape(lead), _scatter_rows(entropy, index, n_total).reshape(lead)
    return _scatter_rows(out, index, n_total).reshape(lead)
