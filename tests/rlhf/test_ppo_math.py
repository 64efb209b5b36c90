import math

import pytest
import torch

from trellis.rlhf import ppo
from trellis.rlhf.kl import AdaptiveKLController, FixedKLController, make_kl_controller


def test_gae_matches_hand_computed_example():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = ppo.compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=2: 2 - 1.5 = 0.5 ; t=1: 0 + .9*1.5 - 1 = .35, + .72*.5 ; t=0: 1 + .9*1 - .5 = 1.4, + .72*.71
    expected = torch.tensor([[1.4 + 0.72 * 0.71, 0.71, 0.5, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, expected + torch.tensor([[0.5, 1.0, 1.5, 0.0]]), atol=1e-6)


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.1, -0.2, 0.3], [1.0, 0.0, 0.0]])
    values = torch.tensor([[0.4, 0.2, -0.1], [0.3, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv, ret = ppo.compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(ret[0], torch.tensor([0.2, 0.1, 0.3]), atol=1e-6)
    assert torch.allclose(adv[1], torch.tensor([0.7, 0.0, 0.0]), atol=1e-6)


def test_rewards_put_score_on_last_token_and_kl_everywhere():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    r = ppo.compute_rewards(kl, torch.tensor([2.0, -1.0]), mask, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.01, 2.0 - 0.02, 0.0], [-0.05, -0.05, -1.05]]))


def test_overlong_penalty_ramps_over_the_buffer():
    # max 8 new tokens, a buffer of 4: free up to 4 tokens, then a quarter of the penalty per token
    lengths = torch.tensor([1.0, 4.0, 5.0, 6.0, 8.0])
    assert ppo.overlong_penalties(lengths, 8, 4, 2.0).tolist() == [0.0, 0.0, 0.5, 1.0, 2.0]
    assert ppo.overlong_penalties(lengths, 8, 4, 0.0).tolist() == [0.0] * 5


def test_missing_eos_penalty():
    scores = torch.tensor([1.0, 1.0])
    out = ppo.apply_missing_eos_penalty(scores, torch.tensor([True, False]), 0.5)
    assert out.tolist() == [1.0, 0.5]
    assert ppo.apply_missing_eos_penalty(scores, torch.tensor([True, False]), None).tolist() == [1.0, 1.0]


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    k1 = ppo.kl_per_token(logp, ref, "k1")
    k3 = ppo.kl_per_token(logp, ref, "k3")
    assert torch.allclose(k1, torch.tensor([0.5, -1.0, 0.0]))
    expected_k3 = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
    assert torch.allclose(k3, torch.tensor(expected_k3))
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        ppo.kl_per_token(logp, ref, "k9")


def test_kl_estimators_are_unbiased_on_samples():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(6), torch.randn(6)
    p, q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    true_kl = (p.exp() * (p - q)).sum()
    samples = torch.multinomial(p.exp(), 200_000, replacement=True)
    for est in ("k1", "k3"):
        assert abs(ppo.kl_per_token(p[samples], q[samples], est).mean() - true_kl) < 0.01


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = ppo.masked_whiten(values, mask)
    real = w[mask.bool()]
    assert abs(real.mean()) < 1e-6
    assert abs(real.var(unbiased=True) - 1.0) < 1e-4
    assert (w[~mask.bool()] == 0).all()
    kept = ppo.masked_whiten(values, mask, shift_mean=False)[mask.bool()]
    assert abs(kept.mean() - 2.5) < 1e-5


def test_policy_loss_clips_only_in_the_profitable_direction():
    mask = torch.ones(1, 4)
    old = torch.zeros(1, 4)
    # ratios 1.5, 1.5, 0.5, 0.5 with advantages +, -, +, -
    new = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    out = ppo.policy_loss(new, old, adv, mask, cliprange=0.2)
    # per token: -min(A r, A clip(r)) -> -1.2, 1.5, -0.5, 0.8
    assert torch.allclose(out.loss, torch.tensor((-1.2 + 1.5 - 0.5 + 0.8) / 4))
    assert torch.allclose(out.clip_fraction, torch.tensor(0.5))
    new.requires_grad_(True)
    ppo.policy_loss(new, old, adv, mask, 0.2).loss.backward()
    # clipped tokens (0 and 3) get no gradient, the pessimistic unclipped ones do
    assert new.grad[0, 0] == 0 and new.grad[0, 3] == 0
    assert new.grad[0, 1] != 0 and new.grad[0, 2] != 0


def test_policy_loss_at_ratio_one_is_minus_mean_advantage_and_zero_kl():
    lp = torch.randn(2, 3)
    adv = torch.randn(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = ppo.policy_loss(lp, lp.clone(), adv, mask, 0.2)
    assert torch.allclose(out.loss, -ppo.masked_mean(adv, mask))
    assert out.approx_kl == 0 and out.clip_fraction == 0


def test_value_loss_clipping():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    old = torch.tensor([[0.0, 0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[0.5, -0.5, 3.0]], requires_grad=True)
    out = ppo.value_loss(values, old, returns, mask, cliprange_value=0.2)
    # token 0: unclipped (0.5-1)^2=.25, clipped (0.2-1)^2=.64 -> .64; token 1: 2.25 vs (-.2-1)^2=1.44 -> 2.25
    assert torch.allclose(out.loss, torch.tensor(0.5 * (0.64 + 2.25) / 2))
    assert torch.allclose(out.clip_fraction, torch.tensor(0.5))
    out.loss.backward()
    assert values.grad[0, 0] == 0 and values.grad[0, 1] != 0 and values.grad[0, 2] == 0


def test_entropy_and_logprobs():
    logits = torch.zeros(2, 5)
    assert torch.allclose(ppo.entropy_from_logits(logits), torch.full((2,), math.log(5)))
    lp = ppo.logprobs_from_logits(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]))
    assert torch.allclose(lp, torch.log(torch.tensor([0.75])))


def test_explained_variance():
    mask = torch.ones(1, 4)
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(ppo.explained_variance(r, r, mask), torch.tensor(1.0))
    assert abs(ppo.explained_variance(torch.full_like(r, 2.5), r, mask)) < 1e-6


def test_fixed_kl_controller_does_not_move():
    c = FixedKLController(0.1)
    c.update(100.0, 64)
    assert c.value == 0.1


def test_adaptive_kl_controller():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(12.0, 1000)  # error clipped to +0.2 -> x1.02
    assert math.isclose(c.value, 0.1 * 1.02)
    c.update(3.0, 1000)  # error -0.5 clipped to -0.2 -> x0.98
    assert math.isclose(c.value, 0.1 * 1.02 * 0.98)
    c.update(6.6, 1000)  # error 0.1 -> x1.01
    assert math.isclose(c.value, 0.1 * 1.02 * 0.98 * 1.01)
    restored = make_kl_controller(0.5, True, 1.0, 1)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value and restored.target == 6.0 and restored.horizon == 10_000
    # steered towards the target over many updates
    low = AdaptiveKLController(0.1, target=6.0, horizon=100)
    for _ in range(50):
        low.update(1.0, 10)
    assert math.isclose(low.value, 0.1 * 0.98**50)  # error -0.833 clipped to -0.2, x(1 - 0.2*10/100)
