import json

import pytest
import torch
from rlhf_helpers import run_killed_after_step

from trellis.config import WorldConfig
from trellis.rlhf import stage
from trellis.rlhf.rollout import policy_outputs, response_logprobs, score_rollout
from trellis.rlhf.trainer import TIMING_KEYS, PPOTrainer


def _trainer(make_config, tiny_dirs, prompt_texts, **overrides) -> PPOTrainer:
    from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer

    policy_dir, reward_dir = tiny_dirs
    config = make_config(**overrides)

    value = load_reward_model(reward_dir) if config.value_model == "reward" else None
    return PPOTrainer(config, load_causal_lm(policy_dir), load_causal_lm(policy_dir), value,
                      load_reward_model(reward_dir), load_tokenizer(policy_dir),
                      [{"prompt": p} for p in prompt_texts], torch.device("cpu"))


def test_rollouts_are_the_same_with_and_without_the_lean_decode_step(make_config, tiny_dirs, prompt_texts):
    lean = _trainer(make_config, tiny_dirs, prompt_texts)
    plain = _trainer(make_config, tiny_dirs, prompt_texts, lean_decode=False)
    assert lean.engine.lean_decode is not None and plain.engine.lean_decode is None
    a, b = lean.rollout(), plain.rollout()
    assert a.responses == b.responses and any(a.responses)
    torch.testing.assert_close(a.logprobs, b.logprobs)


@pytest.mark.parametrize("value_model", ["reward", "policy_head"])
def test_length_sorted_micro_batches_give_the_minibatch_gradient(make_config, tiny_dirs, prompt_texts, value_model):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts, lr=0.0, rollout_batch_size=6, minibatch_size=6,
                       entropy_coef=0.01, value_model=value_model)
    # responses of different lengths, so that micro-batches carry different shares of the tokens
    gen = torch.Generator().manual_seed(0)
    responses = [torch.randint(10, 300, (n,), generator=gen).tolist() for n in (2, 8, 5, 1, 7, 3)]
    batch = score_rollout(trainer.policy, trainer.ref_policy, trainer.value_model, trainer.reward_model,
                          trainer.tokenizer, prompt_texts[:6], trainer.prompt_ids[:6], responses, [False] * 6,
                          0.7, torch.device("cpu"), value_head=trainer.value_head)
    advantages = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    returns = torch.randn(batch.mask.shape, generator=gen) * batch.mask
    rows = torch.tensor([4, 0, 5, 2, 1, 3])
    critic = trainer.value_model if trainer.value_head is None else trainer.value_head
    grads, stats = {}, {}
    for micro in (6, 1, 4):
        trainer.micro_batch_size = micro
        stats[micro] = trainer.update_minibatch(batch, advantages, returns, rows)
        grads[micro] = [p.grad.clone() for p in list(trainer.policy.parameters()) + list(critic.parameters())]
    for micro in (1, 4):
        for g_full, g_micro in zip(grads[6], grads[micro], strict=True):
            assert torch.allclose(g_full, g_micro, atol=1e-6, rtol=1e-4)
        for key in ("policy_loss", "value_loss", "approx_kl", "clip_fraction"):
            assert stats[micro][key] == pytest.approx(stats[6][key], abs=1e-6)


def test_policy_outputs_share_one_backbone_pass(make_config, tiny_dirs, prompt_texts):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts, value_model="policy_head")
    torch.nn.init.normal_(trainer.value_head.weight)
    batch = trainer.rollout()
    seq = batch.sequences
    with torch.no_grad():
        logp, _, values = policy_outputs(trainer.policy, seq, 0.7, False, trainer.value_head)
        expected_logp, _ = response_logprobs(trainer.policy, seq, 0.7)
        hidden = trainer.policy(input_ids=seq.input_ids, attention_mask=seq.attention_mask,
                                output_hidden_states=True).hidden_states[-1]
    index = seq.logit_index
    expected_values = trainer.value_head(hidden.gather(1, index[..., None].expand(*index.shape, hidden.shape[-1])))
    assert torch.allclose(logp, expected_logp, atol=1e-6)
    assert torch.allclose(values, expected_values.squeeze(-1) * seq.response_mask, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"value_head_detached": True, "value_warmup_rollouts": 1}])
def test_shared_critic_trains_saves_and_resumes(tmp_path, make_config, monkeypatch, options):
    config = make_config(value_model="policy_head", steps=4, save_every=2, **options)
    stage.run(config, WorldConfig(), tmp_path / "a")
    ckpt = tmp_path / "a" / "rlhf" / "checkpoints" / "step-0000002"
    assert not (ckpt / "value").exists()
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert state["value_head"]["weight"].abs().sum() > 0  # the zero-initialised head has learned

    run_killed_after_step(config, tmp_path / "b", monkeypatch, step=2)
    stage.run(config, WorldConfig(), tmp_path / "b")

    def records(root):
        return [{k: v for k, v in json.loads(x).items() if k != "time" and k not in TIMING_KEYS}
                for x in (root / "rlhf" / "metrics.jsonl").read_text().splitlines()]

    assert records(tmp_path / "a") == records(tmp_path / "b")


def test_bf16_scoring_and_update_share_their_arithmetic(make_config, tiny_dirs, prompt_texts):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts, precision="bf16", ppo_epochs=1, minibatch_size=4,
                       micro_batch_size=2, forward_batch_size=2)
    metrics = trainer.train_step()
    # the old log-probs came from the same bf16 autocast as the first update: the ratio starts at 1
    # (scored in fp32 instead, approx_kl is about 1e-4 here)
    assert metrics["approx_kl"] < 1e-6 and metrics["clip_fraction"] == 0.0
    assert abs(metrics["ratio_mean"] - 1.0) < 1e-3


@pytest.mark.parametrize("value_model", ["reward", "policy_head"])
def test_fused_scoring_pass_trains_as_the_separate_scoring_pass(make_config, tiny_dirs, prompt_texts, value_model):
    """fuse_scoring_pass takes the old log-probs, values and entropy from the first epoch's own forward
    pass: the same training as scoring them in a separate pass, up to float rounding."""
    options = dict(rollout_batch_size=6, minibatch_size=6, micro_batch_size=4, ppo_epochs=2, lr=1e-3,
                   entropy_coef=0.01, value_model=value_model)
    runs = {}
    for fused in (False, True):
        trainer = _trainer(make_config, tiny_dirs, prompt_texts, fuse_scoring_pass=fused, **options)
        history = [trainer.train_step() for _ in range(2)]
        critic = trainer.value_model if trainer.value_head is None else trainer.value_head
        weights = [p.detach().clone() for p in [*trainer.policy.parameters(), *critic.parameters()]]
        runs[fused] = (history, weights)
    (plain, plain_weights), (fused, fused_weights) = runs[False], runs[True]
    initial = _trainer(make_config, tiny_dirs, prompt_texts, **options).policy.parameters()
    moved = max(float((a - b.detach()).abs().max()) for a, b in zip(plain_weights, initial, strict=False))
    assert moved > 1e-4  # training changed the weights, so equal weights below mean equal training
    for a, b in zip(plain_weights, fused_weights, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    for key in ("reward_mean", "kl_mean", "entropy", "value_mean", "policy_loss", "value_loss", "approx_kl"):
        for p, f in zip(plain, fused, strict=True):
            assert f[key] == pytest.approx(p[key], rel=1e-3, abs=1e-5), key


def test_fused_scoring_skips_the_policy_and_starts_at_ratio_one(make_config, tiny_dirs, prompt_texts):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts, fuse_scoring_pass=True, rollout_batch_size=4,
                       minibatch_size=4, micro_batch_size=2, ppo_epochs=1)

    def no_policy(*_):
        raise AssertionError("the policy ran in a scoring pass that fuse_scoring_pass leaves to the update")

    hook = trainer.policy.model.register_forward_pre_hook(no_policy)
    responses = [[11, 12, 13], [14, 15]]
    batch = score_rollout(trainer.policy, trainer.ref_policy, trainer.value_model, trainer.reward_model,
                          trainer.tokenizer, prompt_texts[:2], trainer.prompt_ids[:2], responses, [False] * 2,
                          0.7, torch.device("cpu"), policy_pass=False)
    hook.remove()
    assert batch.logprobs.abs().sum() == 0 and batch.ref_logprobs.abs().sum() > 0
    metrics = trainer.train_step()
    # old log-probs are the first pass's own outputs, detached: the one epoch's ratio is exactly 1
    assert metrics["ratio_mean"] == 1.0 and metrics["approx_kl"] == 0.0 and metrics["clip_fraction"] == 0.0
    assert metrics["entropy"] > 0 and metrics["value_mean"] != 0.0


def test_fused_scoring_needs_one_minibatch_per_rollout(make_config):
    with pytest.raises(ValueError, match="fuse_scoring_pass needs one minibatch per rollout"):
        make_config(fuse_scoring_pass=True, rollout_batch_size=8, minibatch_size=4)


def test_micro_batch_size_auto_is_8_on_a_cpu_and_the_minibatch_on_a_gpu():
    from trellis.config import RLHFConfig
    from trellis.rlhf.trainer import resolve_micro_batch_size

    assert RLHFConfig(policy="p", reward_model="r").micro_batch_size == "auto"
    assert RLHFConfig(policy="p", reward_model="r", micro_batch_size=4).micro_batch_size == 4
    assert resolve_micro_batch_size("auto", 32, "cpu") == 8
    assert resolve_micro_batch_size("auto", 32, "cuda") == 32
    assert resolve_micro_batch_size(4, 32, "cuda") == 4
    with pytest.raises(ValueError, match="micro_batch_size"):
        RLHFConfig(policy="p", reward_model="r", micro_batch_size="many")


def test_overlong_penalty_lowers_the_scores_of_long_answers(make_config, tiny_dirs, prompt_texts):
    from trellis.config import RLHFConfig

    trainer = _trainer(make_config, tiny_dirs, prompt_texts, rollout_batch_size=4, max_new_tokens=8)
    batch = trainer.rollout()
    plain = trainer.token_rewards(batch)[1]
    trainer.config = trainer.config.model_copy(update={"overlong_penalty": 1.0, "overlong_buffer": 4})
    penalised = trainer.token_rewards(batch)[1]
    lengths = batch.response_lengths
    want = (lengths - 4).clamp(min=0, max=4) / 4
    torch.testing.assert_close(plain - penalised, want.to(plain.dtype))
    assert float(want.max()) > 0  # some answer of the tiny policy reached the buffer
    assert trainer.train_step()["overlong_penalty_mean"] >= 0.0
    with pytest.raises(ValueError, match="overlong_buffer"):
        RLHFConfig(policy="p", reward_model="r", overlong_penalty=1.0, overlong_buffer=40, max_new_tokens=32)


def test_the_optimizers_take_the_fused_adamw_on_a_cpu(make_config, tiny_dirs, prompt_texts):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts)
    assert trainer.policy_optim.defaults["fused"] and trainer.value_optim.defaults["fused"]
