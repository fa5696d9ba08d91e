"""The chunked torch backend against the naive reference (values and gradients)."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tcod_kernels.torch_backend as torch_backend
from conftest import make_kl_problem, student_params
from tcod_kernels import fused_kl, fused_logprobs, reference


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Force several row chunks (and a ragged last one) even on tiny problems."""
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 3 * 40)


def _grads(out, params, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad(out, params, g)


def _compare(p, rtol=1e-5, atol=1e-6, **kw):
    ours = fused_kl(**p, backend="torch", **kw)
    ref = reference.fused_kl(**p, **kw)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    params = student_params(p)
    for a, b in zip(_grads(ours, params), _grads(ref, params)):
        assert a.dtype == b.dtype
        # float32 gradients: errors are relative to the gradient's scale, not per element
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=max(atol, 1e-5 * float(b.abs().max())))


MATRIX = list(itertools.product(
    ["forward", "reverse", "jsd"],   # divergence
    [1.0, 0.7],                       # temperature
    ["mean", "sum", "none"],         # reduction
    [False, True],                    # mask
    [False, True],                    # bias
    [None, 33],                       # vocab_size (33: Vs=37 != Vt=40)
    [(13,), (2, 5)],                  # batch shape
))


@pytest.mark.parametrize("divergence,temperature,reduction,masked,bias,vocab_size,lead", MATRIX)
def test_fused_kl_matrix(divergence, temperature, reduction, masked, bias, vocab_size, lead):
    p = make_kl_problem(lead=lead, vs=37, vt=37 if vocab_size is None else 40, bias=bias, scale=1.5)
    mask = None
    if masked:
        mask = torch.rand(lead, generator=torch.Generator().manual_seed(5)) > 0.4
        mask.view(-1)[0] = True
    _compare(p, divergence=divergence, beta=0.35, temperature=temperature, reduction=reduction,
             mask=mask, vocab_size=vocab_size)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_gradcheck_float64(divergence):
    p = make_kl_problem(lead=(4,), hs=3, ht=5, vs=7, vt=9, dtype=torch.float64, bias=True)
    sh, sw, sb = p.pop("student_hidden"), p.pop("student_weight"), p.pop("student_bias")
    for reduction in ("sum", "none"):
        fn = lambda a, b, c: fused_kl(a, b, student_bias=c, divergence=divergence, vocab_size=6,
                                      temperature=0.8, reduction=reduction, backend="torch", **p)
        assert torch.autograd.gradcheck(fn, (sh, sw, sb))


def test_logprobs_gradcheck_float64():
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(5, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(8, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, generator=gen, requires_grad=True)
    y = torch.tensor([0, 7, -100, 3, 3])
    fn = lambda a, c, d: fused_logprobs(a, c, y, bias=d, temperature=0.9, return_entropy=True, backend="torch")
    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_low_precision_inputs_use_float32_math(dtype, divergence):
    p = make_kl_problem(lead=(12,), vs=37, dtype=dtype, bias=True)
    ours = fused_kl(**p, divergence=divergence, backend="torch")
    assert ours.dtype == torch.float32
    # the reference on the same (rounded) inputs upcast to float32 is the exact target
    p32 = {k: (None if v is None else v.detach().float().requires_grad_(v.requires_grad)) for k, v in p.items()}
    ref = reference.fused_kl(**p32, divergence=divergence)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(ours, student_params(p)), torch.autograd.grad(ref, student_params(p32))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.to(dtype).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_extreme_logits_stay_finite_and_correct(divergence):
    p = make_kl_problem(lead=(6,), vs=37, bias=False)
    with torch.no_grad():  # logits of order 1e3
        p["student_weight"].mul_(600.0)
        p["teacher_weight"].mul_(600.0)
    ours = fused_kl(**p, divergence=divergence, reduction="none", backend="torch")
    assert torch.isfinite(ours).all()
    p64 = {k: (None if v is None else v.detach().double().requires_grad_(v.requires_grad)) for k, v in p.items()}
    ref = reference.fused_kl(**p64, divergence=divergence, reduction="none")
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-2)
    grads = torch.autograd.grad(ours.sum(), student_params(p))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_masked_gives_zero_loss_and_zero_grads(reduction):
    p = make_kl_problem(lead=(3, 4), bias=True)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    out = fused_kl(**p, mask=mask, reduction=reduction)
    assert torch.equal(out, torch.zeros_like(out))
    grads = torch.autograd.grad(out.sum(), student_params(p))
    for g in grads:
        assert g is not None and torch.equal(g, torch.zeros_like(g))


def test_masked_tokens_get_no_gradient_and_zero_loss():
    p = make_kl_problem(lead=(8,))
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    out = fused_kl(**p, mask=mask, reduction="none")
    assert torch.equal(out[~mask], torch.zeros(4))
    (dh,) = torch.autograd.grad(out.sum(), [p["student_hidden"]])
    assert torch.equal(dh[~mask], torch.zeros_like(dh[~mask]))
    assert dh[mask].abs().sum() > 0


@pytest.mark.parametrize("temperature", [1.0, 1.6])
@pytest.mark.parametrize("bias", [False, True])
def test_logprobs_match_reference(temperature, bias):
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(3, 7, 10, generator=gen, requires_grad=True)
    w = torch.randn(45, 10, generator=gen, requires_grad=True)
    b = torch.randn(45, generator=gen, requires_grad=True) if bias else None
    y = torch.randint(0, 45, (3, 7), generator=gen)
    y[0, :3] = -100
    ours = fused_logprobs(h, w, y, bias=b, temperature=temperature, return_entropy=True, backend="torch")
    ref = reference.fused_logprobs(h, w, y, bias=b, temperature=temperature, return_entropy=True)
    params = [t for t in (h, w, b) if t is not None]
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)
    ga = torch.autograd.grad(ours[0].sum() * 0.7 + (ours[1] * 0.3).sum(), params)
    gr = torch.autograd.grad(ref[0].sum() * 0.7 + (ref[1] * 0.3).sum(), params)
    for a, r in zip(ga, gr):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours[0][0, :3], torch.zeros(3))


def test_logprobs_without_entropy_and_all_ignored():
    h = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(9, 6, requires_grad=True)
    y = torch.full((4,), -100)
    out = fused_logprobs(h, w, y)
    assert torch.equal(out, torch.zeros(4))
    dh, dw = torch.autograd.grad(out.sum(), [h, w])
    assert torch.equal(dh, torch.zeros_like(dh)) and torch.equal(dw, torch.zeros_like(dw))


def test_no_grad_mode_runs_without_gradients():
    p = make_kl_problem(lead=(5,))
    with torch.no_grad():
        out = fused_kl(**p)
    assert not out.requires_grad
    torch.testing.assert_close(out, reference.fused_kl(**p).detach())


# ------------------------------------------------------------------ properties

_settings = settings(max_examples=25, deadline=None)


@st.composite
def _problems(draw):
    n = draw(st.integers(1, 6))
    h = draw(st.integers(1, 5))
    v = draw(st.integers(2, 20))
    seed = draw(st.integers(0, 10_000))
    scale = draw(st.floats(0.1, 8.0))
    return make_kl_problem(lead=(n,), hs=h, ht=h + 1, vs=v, seed=seed, scale=scale)


@_settings
@given(_problems(), st.sampled_from(["forward", "reverse", "jsd"]), st.floats(0.05, 0.95))
def test_divergence_is_nonnegative(p, divergence, beta):
    out = fused_kl(**p, divergence=divergence, beta=beta, reduction="none")
    assert (out >= -1e-6).all()


@_settings
@given(_problems(), st.sampled_from(["forward", "reverse", "jsd"]))
def test_divergence_is_zero_when_student_equals_teacher(p, divergence):
    out = fused_kl(p["student_hidden"], p["student_weight"], p["student_hidden"].detach(),
                   p["student_weight"].detach(), divergence=divergence, reduction="none")
    torch.testing.assert_close(out, torch.zeros_like(out), atol=1e-6, rtol=0)


@_settings
@given(_problems())
def test_jsd_half_is_symmetric(p):
    a = fused_kl(p["student_hidden"], p["student_weight"], p["teacher_hidden"], p["teacher_weight"],
                 divergence="jsd", beta=0.5, reduction="none")
    # swap roles: the teacher becomes the student (JSD_0.5 is symmetric in its arguments)
    b = fused_kl(p["teacher_hidden"], p["teacher_weight"], p["student_hidden"].detach(), p["student_weight"].detach(),
                 divergence="jsd", beta=0.5, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
