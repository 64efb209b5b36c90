import json

import pytest
import torch
from rlhf_helpers import run_killed_after_step
from rlhf_helpers import tiny_rlhf_config as tiny_config

from trellis.config import RLHFConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.rlhf import stage
from trellis.rlhf.trainer import TIMING_KEYS


def _comparable(records):
    return [{k: v for k, v in r.items() if k != "time" and k not in TIMING_KEYS} for r in records]


def test_a_few_ppo_steps_write_metrics_and_final(tmp_path, tiny_dirs, prompt_file, eos_ids):
    from transformers import AutoModelForCausalLM, GenerationConfig

    config = tiny_config(tiny_dirs, prompt_file, kl_estimator="k3", adaptive_kl=True, target_kl=0.01,
                         kl_horizon=10, entropy_coef=0.01)
    final = stage.run(config, WorldConfig(), tmp_path)
    assert final == tmp_path / "rlhf" / "final"
    records = [json.loads(line) for line in (tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("reward_mean", "reward_std", "kl_mean", "entropy", "clip_fraction", "approx_kl", "value_loss",
                "explained_variance", "response_length", "rollout_tokens_per_s", "update_seconds", "kl_coef"):
        assert key in records[0], key
    assert records[0]["kl_mean"] == pytest.approx(0.0, abs=1e-6)  # the policy starts equal to the reference
    assert records[-1]["kl_mean"] > 0  # ... and has moved after updates
    assert records[-1]["kl_coef"] != records[0]["kl_coef"]  # the adaptive controller reacted
    assert 1 <= records[0]["response_length"] <= 8

    model = AutoModelForCausalLM.from_pretrained(final)
    assert GenerationConfig.from_pretrained(final).eos_token_id == eos_ids
    assert (final / "tokenizer.json").exists()
    start = AutoModelForCausalLM.from_pretrained(tiny_dirs[0])
    assert not torch.equal(model.lm_head.weight, start.lm_head.weight)
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 3
    assert summary["reward_mean_initial"] == records[0]["reward_mean"]
    for key in ("reward_mean_final", "kl_final", "wall_seconds", "episodes_per_s_mean"):
        assert summary[key] is not None, key


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_dirs, prompt_file, monkeypatch):
    config = tiny_config(tiny_dirs, prompt_file, steps=4, save_every=2)
    straight = stage.run(config, WorldConfig(), tmp_path / "a")

    run_killed_after_step(config, tmp_path / "b", monkeypatch, step=2)
    assert (tmp_path / "b" / "rlhf" / "checkpoints" / "step-0000002" / "trainer_state.pt").exists()
    resumed = stage.run(config, WorldConfig(), tmp_path / "b")

    a = [json.loads(line) for line in (tmp_path / "a" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert _comparable(a) == _comparable(b)
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_missing_inputs_are_one_line_errors(tmp_path, tiny_dirs, prompt_file):
    with pytest.raises(TrellisError, match="rlhf.policy"):
        stage.run(RLHFConfig(reward_model=str(tiny_dirs[1])), WorldConfig(), tmp_path)
    with pytest.raises(TrellisError, match="not found"):
        stage.run(tiny_config(tiny_dirs, prompt_file, reward_model=str(tmp_path / "nope")), WorldConfig(), tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops\n')
    with pytest.raises(TrellisError, match="bad.jsonl: line 2"):
        stage.run(tiny_config(tiny_dirs, bad), WorldConfig(), tmp_path)


def test_world_prompts_log_gold_scores_and_the_summary_keys(tmp_path, tiny_dirs, prompt_file):
    pytest.importorskip("trellis.data.world")
    config = tiny_config(tiny_dirs, prompt_file, prompts="world", steps=2, max_new_tokens=4, gold_eval=True,
                         eval_initial=True, eval_max_new_tokens=3, hacking_window=2)
    stage.run(config, WorldConfig(), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["gold_score"] <= 1.0 for r in records)
    assert "gold_harmlessness" in records[0] and "reward_hacking" in records[-1]
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    for key in ("gold_score", "gold_score_initial", "gold_score_sampled_initial", "gold_score_sampled_final",
                "reward_mean_initial", "reward_mean_final", "kl_final"):
        assert isinstance(summary[key], float), key
    assert summary["gold"]["n"] > 0
