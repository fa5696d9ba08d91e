"""GPU backends (triton, cuda) against the naive reference on CUDA, at moderate shapes.

Run by ``scripts/gpu_check.sh`` (``pytest -m gpu tests/``); skipped where no CUDA device exists.
Also checks a shape whose ``tokens x vocab`` exceeds 2^31 against the chunked torch backend.
"""

import itertools

import pytest
import torch

from tcod_kernels import available_backends, fused_kl, fused_logprobs, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _gpu_backends():
    if not torch.cuda.is_available():
        return []
    return [name for name in available_backends("cuda") if name != "torch"]


GPU_BACKENDS = _gpu_backends()
# (gradient tolerance relative to the gradient's scale): bf16 kernels round dz to bf16 for
# the tensor-core GEMMs; float32 kernels use exact float32 products (no TF32).
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (1e-4, 2e-2)}


def _rand(gen, *shape, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen, device="cuda") * scale).to(dtype)


def _kl_problem(n=512, vs=32000, vt=32064, hs=256, ht=384, dtype=torch.float32, bias=True, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    p = dict(
        student_hidden=_rand(gen, n, hs, scale=2.0, dtype=dtype).requires_grad_(),
        student_weight=_rand(gen, vs, hs, scale=hs**-0.5, dtype=dtype).requires_grad_(),
        teacher_hidden=_rand(gen, n, ht, scale=2.0, dtype=dtype),
        teacher_weight=_rand(gen, vt, ht, scale=ht**-0.5, dtype=dtype),
        student_bias=_rand(gen, vs, dtype=dtype).requires_grad_() if bias else None,
        teacher_bias=_rand(gen, vt, dtype=dtype) if bias else None,
    )
    return p, [t for t in (p["student_hidden"], p["student_weight"], p["student_bias"]) if t is not None]


def _close(ours, ref, tol):
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    scale = max(1.0, float(ref.detach().float().abs().max()))
    torch.testing.assert_close(ours.detach().float(), ref.detach().float(), rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def _dtype_id(value):
    return str(value).replace("torch.", "")


@pytest.mark.parametrize("divergence,reduction,dtype", list(itertools.product(
    ["forward", "reverse", "jsd"], ["sum", "none"], [torch.float32, torch.bfloat16])), ids=_dtype_id)
def test_kl_matches_reference(backend, divergence, reduction, dtype):
    p, params = _kl_problem(dtype=dtype)
    mask = torch.rand(p["student_hidden"].shape[0], device="cuda") > 0.1
    kw = dict(divergence=divergence, beta=0.3, temperature=1.3, vocab_size=32000, mask=mask, reduction=reduction)
    ours = fused_kl(**p, backend=backend, **kw)
    ref = reference.fused_kl(**p, **kw)
    tol, grad_tol = TOLERANCES[dtype]
    _close(ours, ref, tol)
    g = torch.randn(ref.shape, device="cuda")
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        assert a.dtype == dtype
        _close(a, b, grad_tol)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=_dtype_id)
@pytest.mark.parametrize("return_entropy", [False, True])
def test_logprobs_match_reference(backend, dtype, return_entropy):
    gen = torch.Generator(device="cuda").manual_seed(1)
    n, v, h = 512, 32000, 256
    hidden = _rand(gen, n, h, scale=2.0, dtype=dtype).requires_grad_()
    weight = _rand(gen, v, h, scale=h**-0.5, dtype=dtype).requires_grad_()
    bias = _rand(gen, v, dtype=dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen, device="cuda")
    targets[::7] = -100
    kw = dict(bias=bias, temperature=0.8, return_entropy=return_entropy)
    ours = fused_logprobs(hidden, weight, targets, backend=backend, **kw)
    ref = reference.fused_logprobs(hidden, weight, targets, **kw)
    ours, ref = (ours, ref) if return_entropy else ((ours,), (ref,))
    tol, grad_tol = TOLERANCES[dtype]
    for a, b in zip(ours, ref):
        _close(a, b, tol)
    ups = [torch.randn(n, device="cuda") for _ in ref]
    for a, b in zip(torch.autograd.grad(ours, (hidden, weight, bias), ups),
                    torch.autograd.grad(ref, (hidden, weight, bias), ups)):
        _close(a, b, grad_tol)


# tokens x vocab = 17000 x 128256 = 2.18e9 > 2^31 - 1: any int32 index over [tokens, vocab] wraps.
BIG_N, BIG_V, BIG_H = 17000, 128256, 64


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_kl_beyond_int32_indexing(backend):
    assert BIG_N * BIG_V > 2**31
    p, params = _kl_problem(n=BIG_N, vs=BIG_V, vt=BIG_V, hs=BIG_H, ht=BIG_H, dtype=torch.bfloat16, bias=False)
    ours = fused_kl(**p, backend=backend, divergence="reverse", reduction="none")
    ref = fused_kl(**p, backend="torch", divergence="reverse", reduction="none")  # chunked over rows
    _close(ours, ref, 1e-4)
    g = torch.randn(BIG_N, device="cuda")
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        _close(a, b, 2e-2)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_logprobs_beyond_int32_indexing(backend):
    gen = torch.Generator(device="cuda").manual_seed(2)
    hidden = _rand(gen, BIG_N, BIG_H, scale=2.0, dtype=torch.bfloat16).requires_grad_()
    weight = _rand(gen, BIG_V, BIG_H, scale=BIG_H**-0.5, dtype=torch.bfloat16).requires_grad_()
    targets = torch.randint(0, BIG_V, (BIG_N,), generator=gen, device="cuda")
    targets[-1] = BIG_V - 1  # the very last (token, vocab) element
    ours = fused_logprobs(hidden, weight, targets, backend=backend)
    ref = fused_logprobs(hidden, weight, targets, backend="torch")
    _close(ours, ref, 1e-4)
    g = torch.randn(BIG_N, device="cuda")
    for a, b in zip(torch.autograd.grad(ours, (hidden, weight), g), torch.autograd.grad(ref, (hidden, weight), g)):
        _close(a, b, 2e-2)
