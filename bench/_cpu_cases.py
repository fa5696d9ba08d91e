"""Inputs and implementations benchmarked on the CPU, shared by the benchmarks and the memory probe.

Every implementation is a callable ``run(inputs)`` doing one forward + backward pass.
"""

from __future__ import annotations

import functools

import torch

from tcod_kernels import fused_kl, fused_logprobs, reference

KL_SHAPE = dict(N=4096, V=32768, Hs=256, Ht=384)
LOGPROB_SHAPE = dict(N=4096, V=32768, H=256)


def kl_inputs(N, V, Hs, Ht, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        student_hidden=torch.randn(N, Hs, generator=gen).requires_grad_(),
        student_weight=(torch.randn(V, Hs, generator=gen) / Hs**0.5).requires_grad_(),
        teacher_hidden=torch.randn(N, Ht, generator=gen),
        teacher_weight=torch.randn(V, Ht, generator=gen) / Ht**0.5,
    )


def logprob_inputs(N, V, H, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden=torch.randn(N, H, generator=gen).requires_grad_(),
        weight=(torch.randn(V, H, generator=gen) / H**0.5).requires_grad_(),
        targets=torch.randint(0, V, (N,), generator=gen),
    )


def _clear_grads(inputs):
    for t in inputs.values():
        if isinstance(t, torch.Tensor):
            t.grad = None


def _kl_ours(inputs, backend):
    fused_kl(**inputs, divergence="reverse", backend=backend).backward()
    _clear_grads(inputs)


def _kl_naive(inputs):
    reference.fused_kl(**inputs, divergence="reverse").backward()
    _clear_grads(inputs)


@functools.lru_cache(maxsize=None)
def _compiled_reference_kl():
    return torch.compile(functools.partial(reference.fused_kl, divergence="reverse"))


def _kl_compiled(inputs):
    _compiled_reference_kl()(**inputs).backward()
    _clear_grads(inputs)


@functools.lru_cache(maxsize=None)
def _liger_reverse_kl():
    # beta=1 makes Liger's generalized JSD the reverse KL(p_s || p_t); hard loss off.
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

    return LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=1.0, compiled=False)


def _kl_liger(inputs):
    labels = torch.zeros(inputs["student_hidden"].shape[0], dtype=torch.long)
    _liger_reverse_kl()(inputs["student_hidden"], inputs["student_weight"], inputs["teacher_hidden"],
                        inputs["teacher_weight"], labels).backward()
    _clear_grads(inputs)


def _lp_ours(inputs):
    fused_logprobs(**inputs, backend="torch").sum().backward()
    _clear_grads(inputs)


def _lp_naive(inputs):
    reference.fused_logprobs(**inputs).sum().backward()
    _clear_grads(inputs)


def _lp_cce(inputs):
    from cut_cross_entropy import linear_cross_entropy

    impl = "cce" if inputs["hidden"].is_cuda else "torch_compile"
    (-linear_cross_entropy(inputs["hidden"], inputs["weight"], inputs["targets"], reduction="none", impl=impl)).sum().backward()
    _clear_grads(inputs)


KL_IMPLS = {
    "tcod-torch": functools.partial(_kl_ours, backend="torch"),
    "naive": _kl_naive,
    "naive-compiled": _kl_compiled,
    "liger-chunked": _kl_liger,
}
LOGPROB_IMPLS = {
    "tcod-torch": _lp_ours,
    "naive": _lp_naive,
    "cce-torch-compile": _lp_cce,
}


def case(kind: str, impl: str):
    """(run, inputs) for a benchmark case: kind is "kl" or "logprobs"."""
    if kind == "kl":
        return KL_IMPLS[impl], kl_inputs(**KL_SHAPE)
    return LOGPROB_IMPLS[impl], logprob_inputs(**LOGPROB_SHAPE)
