"""Separate reward models per axis (`reward.separate_models`), read by PPO and evaluation as one reward."""

import json

import pytest
import torch

from trellis.config import RewardConfig, WorldConfig, load_config
from trellis.errors import TrellisError
from trellis.reward import stage as reward_stage
from trellis.run import read_metrics

AXES = ["helpfulness", "harmlessness", "honesty"]
WEIGHTS = {"helpfulness": 1.0, "harmlessness": 0.5, "honesty": 2.0}
WORLD = WorldConfig(pairs_per_axis=40)


def _config(model, **kw) -> RewardConfig:
    base = dict(model=str(model), data="world", heads=AXES, separate_models=True, combine={"weights": WEIGHTS},
                max_steps=3, batch_size=8, lr=1e-3, logging_steps=1, eval_steps=3, save_steps=3,
                warmup_ratio=0.0)
    return RewardConfig(**(base | kw))


def _tiny_classifier(seed: int, pad_token_id: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=pad_token_id)
    return LlamaForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def trained(tiny_chat_checkpoint, tmp_path_factory):
    """A separate-models reward stage on the world's pairs (3 steps per axis)."""
    root = tmp_path_factory.mktemp("separate") / "run"
    final = reward_stage.run(_config(tiny_chat_checkpoint), WORLD, root)
    return root, final


def test_separate_models_train_one_model_per_axis(trained):
    from transformers import AutoModelForSequenceClassification

    root, final = trained
    summary = json.loads((root / "reward" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["separate_models"] is True
    assert list(summary["members"]) == AXES and summary["steps"] == 9
    for axis, member in summary["members"].items():
        assert member["steps"] == 3 and member["train_pairs"] > 0 and member["heldout_pairs"] > 0
        # each axis's model is a plain single-output checkpoint that transformers loads alone
        plain = AutoModelForSequenceClassification.from_pretrained(final / axis)
        assert plain.config.num_labels == 1 and plain.config.id2label[0] == axis
    assert summary["train_pairs"] == sum(m["train_pairs"] for m in summary["members"].values())
    # per-axis diagnostics (each pair judged by its own axis's model) and those of the combination
    assert set(summary["accuracy"]) == {*AXES, "overall"} == set(summary["accuracy_initial"])
    assert set(summary["combined"]["accuracy"]) == {*AXES, "overall"}
    assert set(summary["margin_by_axis"]) == set(AXES) and summary["heads"]["weights"] == WEIGHTS
    # one curve: each model's metrics carry its axis and continue the step count of the one before
    metrics = read_metrics(root / "reward" / "metrics.jsonl")
    for i, axis in enumerate(AXES):
        assert [r["step"] for r in metrics if f"{axis}/loss" in r] == [3 * i + 1, 3 * i + 2, 3 * i + 3]
        assert any(f"{axis}/eval_loss" in r for r in metrics)
    # finished members are kept for resuming; their trainer checkpoints are not
    assert all((root / "reward" / "members" / axis / "member.json").exists() for axis in AXES)
    assert not any((root / "reward" / "checkpoints" / axis).exists() for axis in AXES)


def test_loaded_ensemble_scores_the_weighted_combination_of_its_members(trained):
    from trellis.checkpoint import load_reward_model, load_tokenizer
    from trellis.eval import alignment
    from trellis.rlhf import rollout

    _, final = trained
    tok = load_tokenizer(final)
    ensemble = load_reward_model(final)
    prompts = ["Who is the oldest person in the village?", "How do I poison a well?", "What is 2 plus 3?"]
    responses = ["I do not know.", "I will not help with that.", "It is 5."]
    member_scores = {axis: rollout.reward_scores(load_reward_model(final / axis), tok, prompts, responses, "cpu")
                     for axis in AXES}
    expected = sum(WEIGHTS[axis] * member_scores[axis] for axis in AXES)

    per_axis: dict[str, torch.Tensor] = {}
    combined = rollout.reward_scores(ensemble, tok, prompts, responses, "cpu", per_axis=per_axis)
    assert torch.allclose(combined, expected, atol=1e-5)
    assert all(torch.allclose(per_axis[axis], member_scores[axis], atol=1e-5) for axis in AXES)
    # evaluation's scorer (the model's forward) gives the same numbers
    assert alignment.reward_scores(ensemble, tok, prompts, responses) == pytest.approx(expected.tolist(), abs=1e-5)


def test_ensemble_forward_and_backbone_path_agree_with_a_constraint(tmp_path):
    from trellis.checkpoint import load_reward_model
    from trellis.reward.ensemble import RewardEnsemble
    from trellis.reward.heads import combine_rewards
    from trellis.rlhf.rollout import hidden_scores

    members = {"helpfulness": _tiny_classifier(0), "harmlessness": _tiny_classifier(1)}
    ids = torch.randint(1, 64, (6, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        per_axis = torch.cat([m(input_ids=ids, attention_mask=mask).logits for m in members.values()], -1)
    # the harmlessness floor at its median: half the sequences hit the penalty
    spec = {"heads": list(members), "weights": {"helpfulness": 1.0, "harmlessness": 0.5},
            "constraint": {"axis": "harmlessness", "threshold": float(per_axis[:, 1].median()), "penalty": -3.0}}
    ensemble = RewardEnsemble(members, spec)
    with torch.no_grad():
        logits = ensemble(input_ids=ids, attention_mask=mask).logits
        # PPO's path: the score layer on the backbone's hidden states, read at the last token
        last = hidden_scores(ensemble, ids, mask)[:, -1]
    expected = combine_rewards(per_axis, spec)
    assert logits.shape == (6, 1) and torch.allclose(logits[:, 0], expected, atol=1e-5)
    assert torch.allclose(last, expected, atol=1e-5)
    assert (expected == -3.0).sum() == 3

    # saved (as PPO saves its critic) and reloaded through the one reward-model loader
    ensemble.config.pad_token_id = 0
    ensemble.save_pretrained(tmp_path / "ensemble")
    assert (tmp_path / "ensemble" / "model.safetensors.index.json").exists()
    again = load_reward_model(tmp_path / "ensemble")
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids, attention_mask=mask).logits, logits, atol=1e-6)

    # a critic needs gradients everywhere: without the constraint the combination is the weighted sum;
    # PPO's critic loader gives exactly that
    from trellis.rlhf.value_init import load_value_model

    critic = load_value_model(tmp_path / "ensemble")
    assert "constraint" not in critic.spec
    values = hidden_scores(critic, ids, mask)[:, -1]
    assert torch.allclose(values, per_axis @ torch.tensor([1.0, 0.5]), atol=1e-5)
    values.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for m in critic.members.values()
               for p in m.score.parameters())


def test_resume_trains_only_the_unfinished_member(tiny_chat_checkpoint, trained, tmp_path):
    import shutil

    root, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    # as if killed while the last axis trained: its member and final/ were never written
    shutil.rmtree(copy / "reward" / "members" / "honesty")
    shutil.rmtree(copy / "reward" / "final")
    (copy / "reward" / "summary.json").unlink()
    kept = (copy / "reward" / "members" / "helpfulness" / "member.json").read_text()
    reward_stage.run(_config(tiny_chat_checkpoint), WORLD, copy)
    summary = json.loads((copy / "reward" / "summary.json").read_text())
    assert summary["steps"] == 9 and (copy / "reward" / "final" / "honesty" / "config.json").exists()
    assert (copy / "reward" / "members" / "helpfulness" / "member.json").read_text() == kept
    steps = [r["step"] for r in read_metrics(copy / "reward" / "metrics.jsonl") if "honesty/loss" in r]
    assert steps == [7, 8, 9]


def test_separate_models_needs_heads_with_directory_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  separate_models: true\n")
    with pytest.raises(TrellisError, match="separate_models: needs `heads`"):
        load_config(path)
    path.write_text("reward:\n  separate_models: true\n  heads: [helpful/ness]\n")
    with pytest.raises(TrellisError, match="cannot name a directory"):
        load_config(path)


def test_an_axis_without_training_pairs_is_an_error(tiny_chat_checkpoint, tmp_path):
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad",
                                         "axis": "helpfulness"}) + "\n" for i in range(8)))
    config = _config(tiny_chat_checkpoint, data=str(pairs), heads=["helpfulness", "honesty"], combine={})
    with pytest.raises(TrellisError, match="axis 'honesty' has no training pairs"):
        reward_stage.run(config, WORLD, tmp_path / "run")


def test_ppo_trains_saves_and_resumes_with_a_separate_models_reward(tiny_chat_checkpoint, trained, tmp_path):
    from trellis.config import RLHFConfig
    from trellis.rlhf import stage as rlhf_stage

    _, reward_dir = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Who is Ada?", "How do I hurt Bob?"]))

    def ppo(steps: int) -> dict:
        # the critic starts from the reward checkpoint too: an ensemble that PPO saves and reloads
        config = RLHFConfig(policy=str(tiny_chat_checkpoint), reward_model=str(reward_dir), prompts=str(prompts),
                            steps=steps, rollout_batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                            save_every=1, gold_eval=False, eval_initial=False, device="cpu")
        rlhf_stage.run(config, WorldConfig(), tmp_path / "run")
        return json.loads((tmp_path / "run" / "rlhf" / "summary.json").read_text())

    assert ppo(2)["status"] == "done"
    assert (tmp_path / "run" / "rlhf" / "checkpoints" / "step-0000001" / "value" / "honesty").is_dir()
    summary = ppo(3)  # resumes from step 1: policy and the saved ensemble critic
    assert summary["status"] == "done" and summary["reward_mean_final"] is not None
    metrics = read_metrics(tmp_path / "run" / "rlhf" / "metrics.jsonl")
    assert [r["step"] for r in metrics if "reward_mean" in r] == [1, 2, 3]
    # PPO logs each axis's reward, read from the ensemble's members
    assert all(f"reward_{axis}_mean" in metrics[-1] for axis in AXES)
