"""Runs the extension's torch-side sweeps on the CPU against the naive reference.

Builds csrc/*.cpp (the real tile loops, GEMM accumulation, autograd wiring through
tcod_kernels.cuda) with csrc/tests/host_launchers.cpp standing in for the CUDA kernels and
csrc/tests/register_cpu.cpp registering the ops for CPU tensors. Checks fused_kl /
fused_logprobs (backend "cuda", forced onto the CPU) in float32 and float64, several tile
geometries, and the packing ops. Exits non-zero on the first mismatch.

    python csrc/tests/host_emulation_check.py [build_dir]   (default: torch's extension cache)
"""

import itertools
import os
import sys
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tcod_kernels import cuda, fused_kl, fused_logprobs, packing, reference  # noqa: E402


def build(build_dir) -> None:
    csrc = ROOT / "csrc"
    sources = sorted(str(p) for p in csrc.glob("*.cpp")) + [
        str(csrc / "tests" / "host_launchers.cpp"), str(csrc / "tests" / "register_cpu.cpp")]
    load(name="tcod_kernels_host_emulation", sources=sources, extra_cflags=["-O1"], is_python_module=False,
         build_directory=build_dir, verbose=False)
    # Let the public API route backend="cuda" to the CPU ops.
    cuda.availability = lambda device: (True, "")


def close(ours, ref, tol, what):
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(ours.detach().double(), ref.detach().double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what}: {m}")


def problem(dtype, bias, seed):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    n, hs, ht, vs, vt = 23, 8, 12, 37, 41
    p = dict(
        student_hidden=rnd(n, hs, scale=2.0).requires_grad_(),
        student_weight=rnd(vs, hs, scale=hs ** -0.5).requires_grad_(),
        teacher_hidden=rnd(n, ht, scale=2.0),
        teacher_weight=rnd(vt, ht, scale=ht ** -0.5),
        student_bias=rnd(vs).requires_grad_() if bias else None,
        teacher_bias=rnd(vt) if bias else None,
    )
    params = [t for t in (p["student_hidden"], p["student_weight"], p["student_bias"]) if t is not None]
    return p, params


def check_kl(dtype, geometry):
    for divergence, reduction, bias in itertools.product(["forward", "reverse", "jsd"], ["sum", "none", "mean"],
                                                         [False, True]):
        p, params = problem(dtype, bias, seed=len(divergence) + len(reduction))
        mask = torch.arange(23) % 4 != 1
        kw = dict(divergence=divergence, beta=0.3, temperature=1.7, vocab_size=35, mask=mask, reduction=reduction)
        what = f"kl {divergence}/{reduction}/bias={bias}/{dtype}/{geometry}"
        ours = fused_kl(**p, backend="cuda", **kw)
        ref = reference.fused_kl(**p, **kw)
        close(ours, ref, 1e-5, what)
        g = torch.randn(ref.shape, dtype=torch.float32)
        ref_grads = torch.autograd.grad(ref, params, g)
        for k, (a, b) in enumerate(zip(torch.autograd.grad(ours, params, g), ref_grads)):
            close(a, b, 1e-4, f"{what} grad {k}")
        # a frozen lm_head: only the hidden-state gradient is formed
        frozen = fused_kl(**{**p, "student_weight": p["student_weight"].detach()}, backend="cuda", **kw)
        (gh,) = torch.autograd.grad(frozen, p["student_hidden"], g)
        close(gh, ref_grads[0], 1e-4, f"{what} hidden-only grad")
        with torch.no_grad():  # same value when the sweep skips the gradients
            close(fused_kl(**p, backend="cuda", **kw), ref.detach(), 1e-5, f"{what} no_grad")


def check_logprobs(dtype, geometry):
    gen = torch.Generator().manual_seed(5)
    n, v, h = 29, 53, 8
    hidden = (torch.randn(n, h, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen, dtype=torch.float64) / 3).to(dtype).requires_grad_()
    bias = torch.randn(v, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::6] = -100
    targets[1] = v - 1
    for return_entropy, with_bias in itertools.product([False, True], [False, True]):
        what = f"logprobs entropy={return_entropy}/bias={with_bias}/{dtype}/{geometry}"
        kw = dict(bias=bias if with_bias else None, temperature=0.7, return_entropy=return_entropy)
        params = (hidden, weight, bias) if with_bias else (hidden, weight)
        ours = fused_logprobs(hidden, weight, targets, backend="cuda", **kw)
        ref = reference.fused_logprobs(hidden, weight, targets, **kw)
        ours, ref = (ours, ref) if return_entropy else ((ours,), (ref,))
        for a, b in zip(ours, ref):
            close(a, b, 1e-5, what)
        ups = [torch.randn(n, dtype=torch.float32) for _ in ref]
        for k, (a, b) in enumerate(zip(torch.autograd.grad(ours, params, ups, retain_graph=True),
                                                 torch.autograd.grad(ref, params, ups, retain_graph=True))):
            close(a, b, 1e-4, f"{what} grad {k}")
        if return_entropy:  # entropy alone drives the gradient (grad_logp is None)
            a = torch.autograd.grad(ours[1].sum(), hidden)[0]
            b = torch.autograd.grad(ref[1].sum(), hidden)[0]
            close(a, b, 1e-4, f"{what} entropy-only grad")


def check_packing():
    gen = torch.Generator().manual_seed(6)
    T, S = 400, 5
    loss_mask = torch.rand(T, generator=gen) > 0.3
    seq_ids = torch.randint(-1, S, (T,), generator=gen, dtype=torch.int32)
    turn_ids = torch.randint(0, 9, (T,), generator=gen, dtype=torch.int32)
    lo = torch.randint(0, 4, (S,), generator=gen)
    hi = lo + torch.randint(0, 5, (S,), generator=gen)
    assert torch.equal(cuda.window_mask(loss_mask, turn_ids, seq_ids, lo, hi),
                       packing._window_mask_torch(loss_mask, turn_ids, seq_ids, lo, hi)), "window_mask"
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        values = torch.randn(T, generator=gen).to(dtype)
        ids = torch.randint(-1, 11, (T,), generator=gen)
        close(cuda.segment_sum(values, ids, 11), packing._segment_sum_torch(values, ids, 11), 1e-5,
              f"segment_sum {dtype}")


def main() -> int:
    build_dir = sys.argv[1] if len(sys.argv) > 1 else None  # None: torch's extension cache
    if build_dir:
        os.makedirs(build_dir, exist_ok=True)
    build(build_dir)
    # (chunk_rows, vocab_tile): one tile (logits reused across passes), ragged row chunks and
    # vocab tiles, one row per chunk.
    for chunk, tile in [(1000, 1000), (7, 10), (1, 16), (5, 37)]:
        os.environ["TCOD_CUDA_CHUNK_ROWS"], os.environ["TCOD_CUDA_VOCAB_TILE"] = str(chunk), str(tile)
        for dtype in (torch.float32, torch.float64):
            check_kl(dtype, (chunk, tile))
            check_logprobs(dtype, (chunk, tile))
    check_packing()
    print("host emulation check: all sweeps match the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
