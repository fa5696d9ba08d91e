"""The Triton backend under the CPU interpreter against the naive reference (values and gradients).

Shapes are tiny but the interpreter's block sizes (16 tokens x 32 vocab x 16 hidden, vocab
splits of 64 columns; see ``tcod_kernels.triton._tiles``) still give several token tiles, a
partial last vocab tile, several vocab splits and a partial last hidden slice.

Where a CUDA device is present the compiled kernels serve the process (a kernel is built for
either the GPU or the interpreter when its module is imported) and ``tests/test_gpu.py``
covers them; this module is then skipped.
"""

import itertools
import os
import subprocess
import sys

import pytest
import torch

if torch.cuda.is_available():
    pytest.skip("a CUDA device is present: the compiled Triton kernels are tested by tests/test_gpu.py, "
                "not the CPU interpreter", allow_module_level=True)
# before the first import of triton (tests/conftest.py sets it too, ahead of every test module)
os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="triton is not installed")

from conftest import make_kl_problem, student_params  # noqa: E402
from tcod_kernels import available_backends, fused_kl, fused_logprobs, reference  # noqa: E402
from tcod_kernels import triton as triton_backend  # noqa: E402
from tcod_kernels.triton import _tiles  # noqa: E402

# The interpreter evaluates masked-out lanes too (e.g. -inf - -inf in vocab padding) and numpy
# warns about them; the results there are discarded by tl.where.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]


@pytest.fixture(params=["chunked", "atomic"])
def grad_strategy(request, monkeypatch):
    """Both ways of back-propagating dz: a stored chunk (16 rows here) + GEMMs, or atomics."""
    monkeypatch.setattr(_tiles, "GRAD_STRATEGY", request.param)
    return request.param


def _upstream(out, seed=1):
    return torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)


def _assert_close(ours, ref, tol):
    """Elementwise ``rtol=tol`` plus an absolute slack of ``tol`` times the reference's scale."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    scale = max(1.0, float(ref.detach().float().abs().max()))
    torch.testing.assert_close(ours.detach().float(), ref.detach().float(), rtol=tol, atol=tol * scale)


def _compare_kl(p, tol=1e-5, grad_tol=None, **kw):
    ours = fused_kl(**p, backend="triton", **kw)
    ref = reference.fused_kl(**p, **kw)
    _assert_close(ours, ref, tol)
    params = student_params(p)
    g = _upstream(ref)
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        _assert_close(a, b, grad_tol or 10 * tol)
    return ours


def test_available_on_cpu_only_under_the_interpreter(monkeypatch):
    assert "triton" in available_backends("cpu")
    assert available_backends("cpu")[0] == "torch"  # "auto" never picks the interpreter
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, reason = triton_backend.availability(torch.device("cpu"))
    assert not ok and "TRITON_INTERPRET=1" in reason
    assert "triton" not in available_backends("cpu")


def test_unavailable_when_triton_was_imported_before_the_interpreter_was_set():
    code = ("import os, torch, triton\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "from tcod_kernels.triton import availability\n"
            "print(availability(torch.device('cpu')))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=root), capture_output=True,
                         text=True, check=True).stdout
    assert "(False, 'triton was imported before TRITON_INTERPRET=1 was set" in out


MATRIX = list(itertools.product(
    ["forward", "reverse", "jsd"],   # divergence
    ["mean", "sum", "none"],         # reduction
))


@pytest.mark.parametrize("divergence,reduction", MATRIX)
def test_kl_matches_reference(divergence, reduction, grad_strategy):
    """Bias, T != 1, vocab_size < Vs != Vt, Hs != Ht, a mask, 3 token tiles, 2 vocab splits."""
    lead = (5, 7)
    p = make_kl_problem(lead=lead, hs=24, ht=40, vs=100, vt=110, bias=True, scale=2.0, seed=3)
    mask = torch.rand(lead, generator=torch.Generator().manual_seed(4)) > 0.2
    _compare_kl(p, divergence=divergence, beta=0.3, temperature=1.7, vocab_size=97, mask=mask,
                reduction=reduction)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_kl_single_split_without_bias(divergence):
    """Fewer tokens than a tile, one vocab split, no bias, T = 1."""
    p = make_kl_problem(lead=(5,), hs=16, ht=20, vs=50, seed=5)
    _compare_kl(p, divergence=divergence, reduction="none")


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_kl_extreme_logits_stay_finite(divergence):
    """Logits in the hundreds: every softmax underflows for most columns; log M via logaddexp."""
    p = make_kl_problem(lead=(9,), hs=16, ht=16, vs=70, scale=40.0, seed=6)
    ours = _compare_kl(p, tol=1e-5, grad_tol=1e-4, divergence=divergence, reduction="none", beta=0.9)
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_kl_bfloat16_student_and_float32_teacher(divergence, grad_strategy):
    p = make_kl_problem(lead=(20,), hs=24, ht=40, vs=90, vt=100, dtype=torch.bfloat16, bias=True, scale=2.0, seed=7)
    p["teacher_hidden"], p["teacher_weight"] = p["teacher_hidden"].float(), p["teacher_weight"].float()
    p["teacher_bias"] = p["teacher_bias"].float()
    # bf16 inputs are exact in float32, so the loss matches closely; gradients pass through a
    # bf16 rounding of dz and of the result.
    _compare_kl(p, tol=1e-5, grad_tol=2e-2, divergence=divergence, vocab_size=90, reduction="mean")


def test_kl_float64_inputs_computed_in_float32_zero_gradient_beyond_vocab_size():
    p = make_kl_problem(lead=(6,), hs=16, ht=16, vs=80, vt=70, dtype=torch.float64, bias=True, seed=8)
    ours = fused_kl(**p, backend="triton", vocab_size=64, reduction="sum")
    ref = reference.fused_kl(**p, vocab_size=64, reduction="sum")  # float64 math
    assert ours.dtype == torch.float64  # the contract's dtype; the kernels compute in float32
    _assert_close(ours, ref, 1e-5)
    params = student_params(p)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(ref, params)):
        assert a.dtype == torch.float64
        _assert_close(a, b, 1e-4)
    dh, dw, db = torch.autograd.grad(fused_kl(**p, backend="triton", vocab_size=64), params)
    assert dw[64:].abs().max() == 0 and db[64:].abs().max() == 0
    assert dw[:64].abs().max() > 0


def test_kl_without_gradient_matches():
    p = make_kl_problem(lead=(6,), hs=16, ht=24, vs=40, seed=9)
    with torch.no_grad():
        ours = fused_kl(**p, backend="triton", divergence="jsd", reduction="none")
    _assert_close(ours, reference.fused_kl(**p, divergence="jsd", reduction="none").detach(), 1e-5)


def _logprob_problem(n=20, h=24, v=100, dtype=torch.float32, bias=True, seed=10):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(n, h, generator=gen) * 2).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen) / h**0.5).to(dtype).requires_grad_()
    b = torch.randn(v, generator=gen).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    targets[::4] = -100
    targets[1] = v - 1  # the last column, inside the partial vocab tile
    return hidden, weight, b, targets


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_logprobs_match_reference(return_entropy, temperature, grad_strategy):
    hidden, weight, bias, targets = _logprob_problem(bias=temperature != 1.0)
    kw = dict(bias=bias, temperature=temperature, return_entropy=return_entropy)
    ours = fused_logprobs(hidden, weight, targets, backend="triton", **kw)
    ref = reference.fused_logprobs(hidden, weight, targets, **kw)
    ours, ref = (ours, ref) if return_entropy else ((ours,), (ref,))
    for a, b in zip(ours, ref):
        _assert_close(a, b, 1e-5)
    params = [t for t in (hidden, weight, bias) if t is not None]
    ups = [_upstream(r, seed=i) for i, r in enumerate(ref)]
    ga = torch.autograd.grad(ours, params, ups)
    gb = torch.autograd.grad(ref, params, ups)
    for a, b in zip(ga, gb):
        _assert_close(a, b, 1e-4)


def test_logprobs_gradient_of_the_entropy_alone():
    hidden, weight, bias, targets = _logprob_problem(n=9, v=70, seed=11)
    _, ent = fused_logprobs(hidden, weight, targets, bias=bias, return_entropy=True, backend="triton")
    _, ref = reference.fused_logprobs(hidden, weight, targets, bias=bias, return_entropy=True)
    for a, b in zip(torch.autograd.grad(ent.sum(), (hidden, weight, bias)),
                    torch.autograd.grad(ref.sum(), (hidden, weight, bias))):
        _assert_close(a, b, 1e-4)


def test_logprobs_bfloat16(grad_strategy):
    hidden, weight, bias, targets = _logprob_problem(dtype=torch.bfloat16, seed=12)
    ours = fused_logprobs(hidden, weight, targets, bias=bias, backend="triton")
    ref = reference.fused_logprobs(hidden, weight, targets, bias=bias)
    _assert_close(ours, ref, 1e-5)
    g = _upstream(ref)
    for a, b in zip(torch.autograd.grad(ours, (hidden, weight, bias), g),
                    torch.autograd.grad(ref, (hidden, weight, bias), g)):
        assert a.dtype == torch.bfloat16
        _assert_close(a, b, 2e-2)
