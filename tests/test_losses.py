"""Losses: hand-computed values and gradients, clipping, masks, aggregation, fused full KL."""

import pytest
import torch

from tcod.losses import full_kl_loss, sampled_opd_loss, token_weights


def test_token_weights_token_mean_and_seq_mean():
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    seq = torch.tensor([[0, 0, 1, 1], [2, 2, -1, -1]], dtype=torch.int32)
    w = token_weights(mask, seq, 3, "token-mean")
    assert torch.equal(w, torch.tensor([[0.25, 0.25, 0, 0.25], [0.25, 0, 0, 0]]))
    w = token_weights(mask, seq, 3, "seq-mean-token-mean")
    # seq 0: 2 tokens -> 1/2 each; seq 1: 1 token -> 1; seq 2: 1 token -> 1; then / 3 sequences
    assert torch.allclose(w, torch.tensor([[1 / 6, 1 / 6, 0, 1 / 3], [1 / 3, 0, 0, 0]]))
    assert token_weights(torch.zeros(2, 3, dtype=torch.bool), seq[:, :3], 3, "token-mean").sum() == 0
    with pytest.raises(ValueError, match="loss.aggregation"):
        token_weights(mask, seq, 3, "sum")


def test_sampled_loss_value_and_gradient_on_policy():
    s = torch.tensor([[-1.0, -2.0, -7.0]], requires_grad=True)
    t = torch.tensor([[-0.5, -3.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    w = torch.tensor([[0.5, 0.5, 0.0]])
    loss, stats = sampled_opd_loss(s, t, s.detach().clone(), w, mask, kl_coef=1.0)
    # A = [0.5, -1.0]; ratio 1 -> loss = -(0.5 * 0.5) - (-1.0 * 0.5) = 0.25
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert torch.allclose(s.grad, torch.tensor([[-0.25, 0.5, 0.0]]))
    assert stats["kl_estimate"].item() == pytest.approx(((-1 + 0.5) + (-2 + 3)) / 2)
    assert stats["clip_frac"].item() == 0


def test_sampled_loss_ppo_clipping():
    # ratio = exp(0.4) ~ 1.49 > 1.2 for both tokens
    s = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    sampler = torch.tensor([[-1.4, -1.4]])
    t = torch.tensor([[0.0, -2.0]])          # A = +1 (clipped branch), -1 (unclipped)
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = torch.full((1, 2), 0.5)
    loss, stats = sampled_opd_loss(s, t, sampler, w, mask, clip_low=0.2, clip_high=0.2)
    r = torch.exp(torch.tensor(0.4)).item()
    assert loss.item() == pytest.approx(0.5 * (-1 * 1.2) + 0.5 * (1 * r), rel=1e-5)
    loss.backward()
    assert s.grad[0, 0].item() == 0.0                          # positive advantage, ratio above 1+eps
    assert s.grad[0, 1].item() == pytest.approx(0.5 * r, rel=1e-5)  # d/ds (A<0: -A * r) = r
    assert stats["clip_frac"].item() == 1.0


def test_masked_tokens_get_no_gradient_even_with_extreme_values():
    s = torch.tensor([[-1.0, -50.0]], requires_grad=True)
    t = torch.tensor([[-1.5, 0.0]])
    sampler = torch.tensor([[-1.0, 30.0]])
    mask = torch.tensor([[True, False]])
    loss, _ = sampled_opd_loss(s, t, sampler, token_weights(mask, torch.zeros(1, 2, dtype=torch.int32), 1, "token-mean"), mask)
    loss.backward()
    assert torch.isfinite(loss) and s.grad[0, 1] == 0
    assert s.grad[0, 0].item() == pytest.approx(0.5)  # -A = -(t - s) = 0.5


def test_truncated_importance_sampling():
    s = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    sampler = torch.tensor([[-2.0, -0.5]])   # exp(old - sampler) = e^1 (capped at 2), e^-0.5
    t = torch.tensor([[0.0, 0.0]])           # A = 1
    mask = torch.ones(1, 2, dtype=torch.bool)
    w = torch.ones(1, 2)
    loss, _ = sampled_opd_loss(s, t, sampler, w, mask, ratio_base="trainer", tis_cap=2.0)
    assert loss.item() == pytest.approx(-(2.0 + torch.exp(torch.tensor(-0.5)).item()), rel=1e-6)
    with pytest.raises(ValueError, match="tis_cap"):
        sampled_opd_loss(s, t, sampler, w, mask, ratio_base="sampler", tis_cap=2.0)
    with pytest.raises(ValueError, match="ratio_base"):
        sampled_opd_loss(s, t, sampler, w, mask, ratio_base="nope")


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_full_kl_matches_materialized_logits(divergence):
    g = torch.Generator().manual_seed(0)
    sh = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    sw = torch.randn(40, 8, generator=g, dtype=torch.float64) / 3
    th = torch.randn(2, 5, 6, generator=g, dtype=torch.float64)
    tw = torch.randn(44, 6, generator=g, dtype=torch.float64) / 3   # padded teacher vocab
    mask = torch.rand(2, 5, generator=g) > 0.3
    seq = torch.tensor([[0] * 5, [1] * 5], dtype=torch.int32)
    w = token_weights(mask, seq, 2, "seq-mean-token-mean").double()

    sh32, sw32 = sh.float().requires_grad_(), sw.float().requires_grad_()
    loss, per_tok = full_kl_loss(sh32, sw32, th.float(), tw.float(), w.float(), mask, divergence=divergence,
                                 vocab_size=40, backend="torch")
    loss.backward()

    shr, swr = sh.clone().requires_grad_(), sw.clone().requires_grad_()
    ls = torch.log_softmax(shr @ swr.T, -1)
    lt = torch.log_softmax((th @ tw.T)[..., :40], -1)
    if divergence == "forward":
        kl = (lt.exp() * (lt - ls)).sum(-1)
    elif divergence == "reverse":
        kl = (ls.exp() * (ls - lt)).sum(-1)
    else:
        lm = torch.logaddexp(lt + torch.log(torch.tensor(0.5, dtype=torch.float64)),
                             ls + torch.log(torch.tensor(0.5, dtype=torch.float64)))
        kl = 0.5 * (lt.exp() * (lt - lm)).sum(-1) + 0.5 * (ls.exp() * (ls - lm)).sum(-1)
    ref = (kl * w * mask).sum()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(per_tok.double(), (kl * mask).detach(), atol=1e-5)
    assert torch.allclose(sh32.grad.double(), shr.grad, atol=1e-5)
    assert torch.allclose(sw32.grad.double(), swr.grad, atol=1e-5)
