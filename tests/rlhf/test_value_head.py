"""The shared-backbone critic's options: a detached value head, and the value warmup by ridge regression."""

import pytest
import torch
from pydantic import ValidationError

from trellis.rlhf import ppo
from trellis.rlhf.trainer import PPOTrainer
from trellis.rlhf.value_head import fit_value_head, new_value_head, ridge_solution


def _shared_critic_trainer(make_config, tiny_dirs, prompt_texts, **overrides) -> PPOTrainer:
    from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer

    policy_dir, reward_dir = tiny_dirs
    config = make_config(value_model="policy_head", **overrides)
    return PPOTrainer(config, load_causal_lm(policy_dir), load_causal_lm(policy_dir), None,
                      load_reward_model(reward_dir), load_tokenizer(policy_dir),
                      [{"prompt": p} for p in prompt_texts], torch.device("cpu"))


@pytest.mark.parametrize("detached", [False, True])
def test_a_detached_value_head_sends_no_value_gradient_into_the_backbone(make_config, tiny_dirs, prompt_texts,
                                                                          detached):
    trainer = _shared_critic_trainer(make_config, tiny_dirs, prompt_texts, value_head_detached=detached,
                                     rollout_batch_size=4, minibatch_size=4)
    torch.nn.init.normal_(trainer.value_head.weight)  # a zero head passes no gradient to its input either way
    batch = trainer.rollout()
    gen = torch.Generator().manual_seed(0)
    zero_advantages = torch.zeros_like(batch.mask)  # no policy gradient: what reaches the backbone is the critic's
    returns = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    trainer.update_minibatch(batch, zero_advantages, returns, torch.arange(4))
    backbone_grad = sum(float(p.grad.abs().sum()) for p in trainer.policy.parameters() if p.grad is not None)
    assert float(trainer.value_head.weight.grad.abs().sum()) > 0
    assert (backbone_grad == 0.0) == detached


def test_ridge_solution_recovers_a_linear_function_and_ignores_masked_rows():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(200, 5, generator=gen)
    w, b = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3]), 0.7
    targets = features @ w + b
    weights = torch.ones(200)
    weights[:50] = 0.0
    targets[:50] = 100.0  # masked rows: must not move the fit
    fit_w, fit_b = ridge_solution(features, targets, weights, ridge=1e-8)
    assert torch.allclose(fit_w, w, atol=1e-4) and float(fit_b) == pytest.approx(b, abs=1e-4)


def test_fitting_the_value_head_lowers_its_value_loss(make_config, tiny_dirs, prompt_texts):
    trainer = _shared_critic_trainer(make_config, tiny_dirs, prompt_texts, rollout_batch_size=8)
    batch = trainer.rollout()
    rewards = trainer.token_rewards(batch)[2]
    mask = batch.mask
    _, returns_of_zero_head = ppo.compute_gae(rewards, torch.zeros_like(mask), mask, 1.0, 0.95)
    zero_head_mse = float(ppo.masked_mean(returns_of_zero_head**2, mask))
    fitted_mse = fit_value_head(trainer.value_head, batch.extra["value_features"], rewards, mask, 1.0, 0.95)
    assert fitted_mse < 0.5 * zero_head_mse
    # the reported error is that of the head as it now is, on the returns its values give
    with torch.no_grad():
        values = trainer.value_head(batch.extra["value_features"]).squeeze(-1) * mask
    _, returns = ppo.compute_gae(rewards, values, mask, 1.0, 0.95)
    assert float(ppo.masked_mean((values - returns) ** 2, mask)) == pytest.approx(fitted_mse, rel=0.2)


def test_value_warmup_runs_once_before_the_first_update(make_config, tiny_dirs, prompt_texts):
    trainer = _shared_critic_trainer(make_config, tiny_dirs, prompt_texts, value_warmup_rollouts=2,
                                     rollout_batch_size=4)
    calls = []
    original = trainer.warm_up_value_head
    trainer.warm_up_value_head = lambda: (calls.append(trainer.step), original())[1]
    trainer.train_step()
    assert calls == [0] and trainer.meta["value_warmup_mse"] >= 0.0
    assert trainer.order.position == 3 * 4  # two warmup rollouts and the first training rollout
    trainer.train_step()
    assert calls == [0]


def test_value_head_options_need_the_shared_critic(make_config):
    for option in ({"value_head_detached": True}, {"value_warmup_rollouts": 1}):
        with pytest.raises(ValidationError, match=next(iter(option))):
            make_config(value_model="reward", **option)


def test_new_value_head_starts_at_zero():
    policy = torch.nn.Module()
    policy.config = type("Config", (), {"hidden_size": 6})()
    head = new_value_head(policy, "cpu", detach_input=True)
    assert head.detach_input and float(head(torch.randn(3, 6)).detach().abs().sum()) == 0.0
    assert set(head.state_dict()) == {"weight", "bias"}  # the checkpoint layout of the plain linear head
