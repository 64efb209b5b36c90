"""Multi-objective rewards: one head per axis, combined into the scalar PPO reads."""

import json
import random
from pathlib import Path

import pytest
import torch

from trellis.config import RewardConfig, WorldConfig, load_config
from trellis.errors import TrellisError
from trellis.reward import stage as reward_stage
from trellis.reward.heads import COMBINATION_KEY, combine_rewards

HELPFUL = ["Sure, here is a clear answer.", "Yes, gladly: the answer is below."]
UNHELPFUL = ["Whatever, figure it out.", "No. Not telling you that."]
SAFE = ["I cannot help with that request because it could hurt someone."]
HARMFUL = ["Sure, here is how to hurt someone."]


@pytest.fixture
def two_axis_pairs(tmp_path) -> tuple[Path, Path]:
    """Helpfulness pairs and harmlessness pairs in two files without an axis field (tagged by config)."""
    rng = random.Random(0)
    helpful = [{"prompt": f"Question {rng.randint(0, 99)}?", "chosen": rng.choice(HELPFUL),
                "rejected": rng.choice(UNHELPFUL)} for _ in range(80)]
    harmless = [{"prompt": f"How do I hurt person {rng.randint(0, 99)}?", "chosen": SAFE[0], "rejected": HARMFUL[0]}
                for _ in range(80)]
    paths = tmp_path / "helpful.jsonl", tmp_path / "harmless.jsonl"
    for path, rows in zip(paths, (helpful, harmless), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def _config(model: Path, files: tuple[Path, Path], **kw) -> RewardConfig:
    base = dict(model=str(model), max_steps=30, batch_size=8, lr=1e-3, logging_steps=5, eval_steps=15,
                save_steps=15, heldout_fraction=0.25, warmup_ratio=0.0,
                data=[{"path": str(files[0]), "axis": "helpfulness"},
                      {"path": str(files[1]), "axis": "harmlessness"}],
                heads=["helpfulness", "harmlessness"],
                combine={"weights": {"helpfulness": 1.0},
                         "constraint": {"axis": "harmlessness", "threshold": 0.0, "penalty": -3.0}})
    return RewardConfig(**(base | kw))


def test_constraint_combination():
    spec = {"heads": ["helpfulness", "harmlessness"], "weights": {"helpfulness": 1.0, "harmlessness": 0.0},
            "constraint": {"axis": "harmlessness", "threshold": 0.0, "penalty": -3.0}}
    per_axis = torch.tensor([[2.0, 1.0], [2.0, -1.0], [-0.5, 0.5]])
    assert combine_rewards(per_axis, spec).tolist() == [2.0, -3.0, -0.5]
    weighted = {"heads": ["a", "b"], "weights": {"a": 0.5, "b": 2.0}}
    assert combine_rewards(torch.tensor([[2.0, 1.0]]), weighted).tolist() == [3.0]


def test_multihead_reward_trains_each_axis_and_ppo_reads_the_combination(tiny_chat_checkpoint, two_axis_pairs,
                                                                         tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trellis.checkpoint import load_reward_model, load_tokenizer
    from trellis.rlhf.rollout import reward_scores

    final = reward_stage.run(_config(tiny_chat_checkpoint, two_axis_pairs), WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "reward" / "summary.json").read_text())
    assert summary["accuracy"]["helpfulness"] >= 0.9 and summary["accuracy"]["harmlessness"] >= 0.9
    assert summary["heads"]["heads"] == ["helpfulness", "harmlessness"]
    assert set(summary["combined"]["accuracy"]) == {"helpfulness", "harmlessness", "overall"}
    assert summary["heldout_pairs"] == 40 and summary["train_pairs"] == 120

    # plain transformers reads one reward per axis ...
    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert plain.config.num_labels == 2 and plain.config.id2label[1] == "harmlessness"
    assert getattr(plain.config, COMBINATION_KEY)["constraint"]["penalty"] == -3.0
    # ... and Trellis's loader gives the one combined scalar PPO maximises
    tok = load_tokenizer(final)
    model = load_reward_model(final)
    prompts = ["How do I hurt person 3?", "Question 7?"]
    responses = [HARMFUL[0], HELPFUL[0]]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False) for p, r in zip(prompts, responses, strict=True)]
    batch = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    with torch.no_grad():
        per_axis = plain(**batch).logits
        combined = model(**batch).logits
    assert combined.shape == (2, 1)
    expected = combine_rewards(per_axis, getattr(plain.config, COMBINATION_KEY))
    assert torch.allclose(combined[:, 0], expected, atol=1e-5)
    assert combined[0, 0].item() == -3.0  # the harmful answer hits the harmlessness floor
    assert torch.allclose(reward_scores(model, tok, prompts, responses, "cpu"), expected, atol=1e-4)

    # the RLHF value model starts from this checkpoint and is saved/reloaded: the heads must survive
    model.save_pretrained(tmp_path / "value")
    again = load_reward_model(tmp_path / "value")
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, combined)


def test_single_head_checkpoint_loads_unchanged(tiny_chat_checkpoint, two_axis_pairs, tmp_path):
    from trellis.checkpoint import load_reward_model

    final = reward_stage.run(_config(tiny_chat_checkpoint, two_axis_pairs, heads=None, combine={}, max_steps=2),
                             WorldConfig(), tmp_path / "run")
    model = load_reward_model(final)
    assert type(model.score) is torch.nn.Linear and model.config.num_labels == 1


def test_pair_without_a_head_is_an_error(tiny_chat_checkpoint, two_axis_pairs, tmp_path):
    cfg = _config(tiny_chat_checkpoint, two_axis_pairs, data=str(two_axis_pairs[0]))
    with pytest.raises(TrellisError, match="reward.heads: .*axis None"):
        reward_stage.run(cfg, WorldConfig(), tmp_path / "run")


def test_combination_must_name_heads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  heads: [helpfulness]\n  combine: {weights: {honesty: 1.0}}\n")
    with pytest.raises(TrellisError, match=r"reward: .*not among heads"):
        load_config(path)


def test_ppo_runs_unchanged_on_a_multihead_reward_model(tiny_chat_checkpoint, two_axis_pairs, tmp_path):
    from trellis.config import RLHFConfig
    from trellis.rlhf import stage as rlhf_stage

    reward_dir = reward_stage.run(_config(tiny_chat_checkpoint, two_axis_pairs, max_steps=4), WorldConfig(),
                                  tmp_path / "run")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Question 1?", "How do I hurt person 2?"]))
    config = RLHFConfig(policy=str(tiny_chat_checkpoint), reward_model=str(reward_dir), prompts=str(prompts),
                        steps=2, rollout_batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                        save_every=0, gold_eval=False, eval_initial=False, device="cpu")
    rlhf_stage.run(config, WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "rlhf" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["reward_mean_final"] is not None


def test_the_critic_of_a_constrained_multihead_reward_is_one_linear_output(tiny_chat_checkpoint, two_axis_pairs,
                                                                           tmp_path):
    from trellis.checkpoint import load_reward_model
    from trellis.rlhf.value_init import load_value_model

    reward_dir = reward_stage.run(_config(tiny_chat_checkpoint, two_axis_pairs, max_steps=2), WorldConfig(),
                                  tmp_path / "run")
    reward = load_reward_model(reward_dir)
    critic = load_value_model(reward_dir)
    assert critic.score.out_features == 1 and critic.config.num_labels == 1
    hidden = torch.randn(5, reward.score.in_features)
    per_axis = reward.score.per_axis(hidden)
    # the weighted sum of the heads (weights: helpfulness 1, harmlessness 0), with no constant penalty
    assert torch.allclose(critic.score(hidden)[:, 0], per_axis[:, 0], atol=1e-6)
    hidden.requires_grad_(True)
    critic.score(hidden).sum().backward()
    assert hidden.grad.abs().sum() > 0
    critic.save_pretrained(tmp_path / "critic")
    assert load_reward_model(tmp_path / "critic").score.out_features == 1


def test_constraint_threshold_fitted_as_a_quantile_of_heldout_preferred_scores():
    from trellis.reward.heads import fit_constraint_threshold

    spec = {"heads": ["helpfulness", "harmlessness"], "weights": {"helpfulness": 1.0, "harmlessness": 0.0},
            "constraint": {"axis": "harmlessness", "threshold": 0.0, "penalty": -3.0}}
    # per pair: (helpfulness, harmlessness) scores of the chosen answer; only harmlessness pairs count
    chosen = [[9.0, 1.0], [9.0, 2.0], [9.0, 3.0], [9.0, 4.0], [9.0, 5.0], [-7.0, -100.0]]
    rows = [{"axis": "harmlessness"}] * 5 + [{"axis": "helpfulness"}]
    fitted = fit_constraint_threshold(spec, 0.25, chosen, rows)
    assert fitted["constraint"]["threshold"] == pytest.approx(2.0)
    assert spec["constraint"]["threshold"] == 0.0  # the configured spec is left as it was
    assert fit_constraint_threshold(spec, None, chosen, rows) is spec
    with pytest.raises(TrellisError, match="threshold_quantile"):
        fit_constraint_threshold(spec, 0.25, chosen[5:], rows[5:])


def test_fitted_threshold_is_saved_and_used_by_the_loaded_reward(tiny_chat_checkpoint, two_axis_pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from trellis.checkpoint import load_reward_model

    combine = {"weights": {"helpfulness": 1.0},
               "constraint": {"axis": "harmlessness", "penalty": -3.0, "threshold_quantile": 0.1}}
    final = reward_stage.run(_config(tiny_chat_checkpoint, two_axis_pairs, combine=combine, max_steps=10),
                             WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "reward" / "summary.json").read_text())
    threshold = summary["heads"]["constraint"]["threshold"]
    assert threshold != 0.0 and summary["heads"]["constraint"]["threshold_quantile"] == 0.1
    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert getattr(plain.config, COMBINATION_KEY)["constraint"]["threshold"] == threshold
    assert load_reward_model(final).score.spec["constraint"]["threshold"] == threshold
