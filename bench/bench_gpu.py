"""GPU benchmarks: fused KL and log-probs, fwd+bwd, our backends next to the naive reference,
torch.compile of it, Liger-Kernel's fused linear JSD and Cut Cross-Entropy.

    pytest bench/bench_gpu.py --benchmark-only [-k "shape_qwen and kl_jsd"] [--benchmark-json out.json]

Shapes (bf16):

* ``shape_bt8192``: Liger-Kernel's published distillation setup, BT=8192, V=128256, Hs=2048, Ht=4096.
* ``shape_qwen``: Qwen2.5 1.5B student -> 7B teacher, N=16384, V=151936, Hs=1536, Ht=3584.

Each benchmark is one ``benchmark.group`` per (kernel, shape[, divergence]) so implementations
sit side by side. ``extra_info``: ``peak_extra_gb`` (``torch.cuda.max_memory_allocated`` during
one fwd+bwd minus the memory held before it, i.e. beyond the inputs), ``tflops`` (by
``2 N V (Ht + 3 Hs)`` for KL, the FLOPs of both logits GEMMs plus the two gradient GEMMs, and
``6 N H V`` for log-probs), ``device``. A peer that does not import, or an implementation that
runs out of memory, is skipped with the reason.
"""

from __future__ import annotations

import os

import pytest
import torch

from tcod_kernels import available_backends, fused_kl, fused_logprobs, reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need a CUDA device")

SHAPES = {  # name: (N, V, Hs, Ht); names are test ids, select with -k "shape_bt8192 and kl_jsd"
    "shape_bt8192": (8192, 128256, 2048, 4096),
    "shape_qwen": (16384, 151936, 1536, 3584),
}
ROUNDS = int(os.environ.get("TCOD_BENCH_ROUNDS", "3"))


def _device_name():
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


_INPUTS = {}


def _inputs(shape):
    """Cached bf16 inputs of one shape (one shape alive at a time)."""
    if shape not in _INPUTS:
        _INPUTS.clear()
        torch.cuda.empty_cache()
        n, v, hs, ht = SHAPES[shape]
        gen = torch.Generator(device="cuda").manual_seed(0)

        def rnd(*s, scale=1.0):
            return (torch.randn(*s, generator=gen, device="cuda") * scale).to(torch.bfloat16)

        _INPUTS[shape] = dict(
            sh=rnd(n, hs).requires_grad_(), sw=rnd(v, hs, scale=hs**-0.5).requires_grad_(),
            th=rnd(n, ht), tw=rnd(v, ht, scale=ht**-0.5),
            targets=torch.randint(0, v, (n,), generator=gen, device="cuda"),
        )
    return _INPUTS[shape]


def _strategy(monkeypatch, impl):
    """The "-atomic" variants run the Triton backend with atomics instead of dz chunks + GEMMs."""
    if impl.endswith("-atomic"):
        from tcod_kernels.triton import _tiles
        monkeypatch.setattr(_tiles, "GRAD_STRATEGY", "atomic")


def _run(benchmark, step, params, flops):
    """Times ``step`` (fwd + bwd) and records memory, TFLOP/s and the device."""

    def clear():
        for t in params:
            t.grad = None

    try:
        for _ in range(2):  # warm-up (autotuning, compilation), then the memory measurement
            clear()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
    except torch.cuda.OutOfMemoryError:
        clear()
        torch.cuda.empty_cache()
        pytest.skip("out of GPU memory at this shape")
    peak = torch.cuda.max_memory_allocated() - before

    def timed():
        step()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, setup=clear, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    clear()
    benchmark.extra_info.update(peak_extra_gb=round(peak / 1e9, 3), device=_device_name())
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["tflops"] = round(flops / benchmark.stats.stats.mean / 1e12, 1)


# --------------------------------------------------------------------------- fused KL


def _ours(backend):
    def make(x, divergence):
        if backend not in available_backends("cuda"):
            pytest.skip(f"backend {backend!r} is not available on this machine")
        return lambda: fused_kl(x["sh"], x["sw"], x["th"], x["tw"], divergence=divergence, backend=backend)
    return make


def _naive(x, divergence):
    return lambda: reference.fused_kl(x["sh"], x["sw"], x["th"], x["tw"], divergence=divergence)


_COMPILED = {}


def _naive_compiled(x, divergence):
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(reference.fused_kl, dynamic=False)
    fn = _COMPILED["fn"]
    return lambda: fn(x["sh"], x["sw"], x["th"], x["tw"], divergence=divergence)


def _liger_fused_linear_jsd(x, divergence):
    """Liger's Triton fused linear JSD (the published 60.71 ms figure); jsd_beta=1 is its reverse KL."""
    try:
        from liger_kernel.transformers.fused_linear_jsd import LigerFusedLinearJSD
    except ImportError as exc:
        pytest.skip(f"liger-kernel does not import: {exc}")
    loss = LigerFusedLinearJSD(jsd_beta=0.5 if divergence == "jsd" else 1.0)
    return lambda: loss(x["sh"], x["sw"], x["th"], x["tw"], None)


def _liger_chunked_jsd_loss(x, divergence):
    """Liger's chunked (torch.compile'd) distillation loss, soft loss only."""
    if divergence != "jsd":
        pytest.skip("LigerFusedLinearJSDLoss is benchmarked for jsd only")
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
    except ImportError as exc:
        pytest.skip(f"liger-kernel does not import: {exc}")
    loss = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5)
    return lambda: loss(x["sh"], x["sw"], x["th"], x["tw"], x["targets"])


KL_IMPLS = {
    "tcod-triton": _ours("triton"),
    "tcod-triton-atomic": _ours("triton"),  # GRAD_STRATEGY="atomic" (see tcod_kernels.triton._tiles)
    "tcod-cuda": _ours("cuda"),
    "naive": _naive,
    "naive-compiled": _naive_compiled,
    "liger-fused-linear-jsd": _liger_fused_linear_jsd,
    "liger-chunked-jsd-loss": _liger_chunked_jsd_loss,
}


@pytest.mark.parametrize("impl", list(KL_IMPLS))
@pytest.mark.parametrize("divergence", ["reverse", "jsd"], ids=["kl_reverse", "kl_jsd"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_kl(benchmark, monkeypatch, shape, divergence, impl):
    n, v, hs, ht = SHAPES[shape]
    _strategy(monkeypatch, impl)
    benchmark.group = f"kl-{shape[6:]}-{divergence}"
    x = _inputs(shape)
    forward = KL_IMPLS[impl](x, divergence)
    _run(benchmark, lambda: forward().backward(), [x["sh"], x["sw"]], 2 * n * v * (ht + 3 * hs))


# --------------------------------------------------------------------------- log-probs


def _lp_ours(backend):
    def make(x):
        if backend not in available_backends("cuda"):
            pytest.skip(f"backend {backend!r} is not available on this machine")
        return lambda: fused_logprobs(x["sh"], x["sw"], x["targets"], backend=backend)
    return make


def _lp_cce(x):
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError as exc:
        pytest.skip(f"cut-cross-entropy does not import: {exc}")
    return lambda: -linear_cross_entropy(x["sh"], x["sw"], x["targets"], reduction="none")


LOGPROB_IMPLS = {
    "tcod-triton": _lp_ours("triton"),
    "tcod-triton-atomic": _lp_ours("triton"),
    "tcod-cuda": _lp_ours("cuda"),
    "naive": lambda x: lambda: reference.fused_logprobs(x["sh"], x["sw"], x["targets"]),
    "cut-cross-entropy": _lp_cce,
}


@pytest.mark.parametrize("impl", list(LOGPROB_IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fused_logprobs(benchmark, monkeypatch, shape, impl):
    n, v, hs, _ = SHAPES[shape]
    _strategy(monkeypatch, impl)
    benchmark.group = f"logprobs-{shape[6:]}"
    x = _inputs(shape)
    forward = LOGPROB_IMPLS[impl](x)
    _run(benchmark, lambda: forward().sum().backward(), [x["sh"], x["sw"]], 6 * n * hs * v)
