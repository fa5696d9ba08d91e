"""CPU benchmarks: fused_kl / fused_logprobs fwd+bwd beside the naive reference and the peers.

Shapes: KL N=4096, V=32768, Hs=256, Ht=384 (reverse KL); log-probs N=4096, V=32768, H=256.
Peers: the naive reference (materialized logits), torch.compile of it, Liger-Kernel's chunked
distillation loss (LigerFusedLinearJSDLoss with beta=1, i.e. reverse KL, compiled=False), and
Cut Cross-Entropy's linear_cross_entropy (torch_compile impl on the CPU) for log-probs.
``extra_info``: peak extra RSS of one call in a fresh process (bench/_memprobe.py), GFLOP/s.
Run: ``pytest bench/bench_cpu_kernels.py --benchmark-only``; bench/summarize.py turns the
JSON into a table of ratios against the naive reference.
"""

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _cpu_cases import KL_IMPLS, KL_SHAPE, LOGPROB_IMPLS, LOGPROB_SHAPE, case  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _peak_extra_bytes(kind: str, impl: str) -> int:
    out = subprocess.run([sys.executable, os.path.join(HERE, "_memprobe.py"), kind, impl],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def _record(benchmark, kind, impl, flops):
    benchmark.extra_info["peak_extra_mb"] = round(_peak_extra_bytes(kind, impl) / 2**20, 1)
    benchmark.extra_info["gflops_per_s"] = round(flops / benchmark.stats.stats.mean / 1e9, 2)
    benchmark.extra_info["device"] = "cpu"
    benchmark.extra_info["threads"] = torch.get_num_threads()


def _optional_peer(impl):
    try:
        if impl == "liger-chunked":
            import liger_kernel  # noqa: F401
        if impl.startswith("cce"):
            import cut_cross_entropy  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"peer {impl} is not installed: {exc}")


@pytest.mark.parametrize("impl", list(KL_IMPLS))
def test_kl_reverse_fwd_bwd(benchmark, impl):
    _optional_peer(impl)
    benchmark.group = "kl-reverse N=4096 V=32768 Hs=256 Ht=384 fp32"
    run, inputs = case("kl", impl)
    benchmark.pedantic(run, args=(inputs,), rounds=3, iterations=1, warmup_rounds=1)
    s = KL_SHAPE
    _record(benchmark, "kl", impl, 2 * s["N"] * s["V"] * (s["Ht"] + 3 * s["Hs"]))


@pytest.mark.parametrize("impl", list(LOGPROB_IMPLS))
def test_logprobs_fwd_bwd(benchmark, impl):
    _optional_peer(impl)
    benchmark.group = "logprobs N=4096 V=32768 H=256 fp32"
    run, inputs = case("logprobs", impl)
    benchmark.pedantic(run, args=(inputs,), rounds=3, iterations=1, warmup_rounds=1)
    s = LOGPROB_SHAPE
    _record(benchmark, "logprobs", impl, 6 * s["N"] * s["H"] * s["V"])
