"""The naive reference against float64 math written independently in NumPy."""

import numpy as np
import pytest
import torch

from conftest import make_kl_problem
from tcod_kernels import reference


def _np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_logp(hidden, weight, bias, temperature, vocab):
    z = hidden.astype(np.float64) @ weight[:vocab].astype(np.float64).T
    if bias is not None:
        z = z + bias[:vocab]
    return _np_log_softmax(z / temperature)


def _np_divergence(ls, lt, divergence, beta):
    ps, pt = np.exp(ls), np.exp(lt)
    if divergence == "forward":
        return (pt * (lt - ls)).sum(-1)
    if divergence == "reverse":
        return (ps * (ls - lt)).sum(-1)
    lm = np.logaddexp(lt + np.log(beta), ls + np.log(1 - beta))
    return beta * (pt * (lt - lm)).sum(-1) + (1 - beta) * (ps * (ls - lm)).sum(-1)


def _np_grad_z(ls, lt, divergence, beta):
    """The gradient identities of DESIGN.md section 3, with respect to z_s = logits / T."""
    ps, pt = np.exp(ls), np.exp(lt)
    if divergence == "forward":
        return ps - pt
    if divergence == "reverse":
        kl = (ps * (ls - lt)).sum(-1, keepdims=True)
        return ps * (ls - lt - kl)
    lm = np.logaddexp(lt + np.log(beta), ls + np.log(1 - beta))
    kl = (ps * (ls - lm)).sum(-1, keepdims=True)
    return (1 - beta) * ps * (ls - lm - kl)


def _np(t):
    return None if t is None else t.detach().double().numpy()


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("bias", [False, True])
def test_reference_matches_float64_numpy(divergence, temperature, bias):
    p = make_kl_problem(lead=(9,), vs=41, vt=45, bias=bias, scale=2.0)
    vocab = 40
    out = reference.fused_kl(**p, divergence=divergence, beta=0.3, temperature=temperature,
                             vocab_size=vocab, reduction="none")
    assert out.dtype == torch.float32
    ls = _np_logp(_np(p["student_hidden"]), _np(p["student_weight"]), _np(p["student_bias"]), temperature, vocab)
    lt = _np_logp(_np(p["teacher_hidden"]), _np(p["teacher_weight"]), _np(p["teacher_bias"]), temperature, vocab)
    expected = _np_divergence(ls, lt, divergence, 0.3)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=2e-5, atol=1e-6)

    # gradient w.r.t. hidden: dL/dh = (dL/dz / T) @ W, by the identities, in float64
    out.sum().backward()
    dz = _np_grad_z(ls, lt, divergence, 0.3) / temperature
    expected_dh = dz @ _np(p["student_weight"])[:vocab]
    np.testing.assert_allclose(p["student_hidden"].grad.numpy(), expected_dh, rtol=1e-4, atol=1e-5)
    expected_dw = np.zeros_like(_np(p["student_weight"]))
    expected_dw[:vocab] = dz.T @ _np(p["student_hidden"])
    np.testing.assert_allclose(p["student_weight"].grad.numpy(), expected_dw, rtol=1e-4, atol=1e-5)


def test_reference_logprobs_match_float64_numpy():
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(11, 7, generator=gen)
    w = torch.randn(29, 7, generator=gen)
    b = torch.randn(29, generator=gen)
    y = torch.randint(0, 29, (11,), generator=gen)
    y[4] = -100
    logp, ent = reference.fused_logprobs(h, w, y, bias=b, temperature=1.3, return_entropy=True)
    lp = _np_logp(h.numpy(), w.numpy(), b.numpy(), 1.3, 29)
    exp_logp = lp[np.arange(11), y.clamp(min=0).numpy()]
    exp_logp[4] = 0.0
    exp_ent = -(np.exp(lp) * lp).sum(-1)
    exp_ent[4] = 0.0
    np.testing.assert_allclose(logp.numpy(), exp_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent.numpy(), exp_ent, rtol=1e-5, atol=1e-6)


def test_reference_float64_gradcheck():
    p = make_kl_problem(lead=(3,), hs=4, ht=5, vs=6, dtype=torch.float64, bias=True)
    sh, sw, sb = p.pop("student_hidden"), p.pop("student_weight"), p.pop("student_bias")
    fn = lambda a, b, c: reference.fused_kl(a, b, student_bias=c, divergence="jsd", beta=0.4, **p)
    assert torch.autograd.gradcheck(fn, (sh, sw, sb))
