"""Greedy samples of the PPO policy before, during and after training, and their section of the report."""

from __future__ import annotations

import json

from rlhf_helpers import run_killed_after_step

from trellis.config import WorldConfig
from trellis.config.sft import SampleGenerations
from trellis.report import write_report
from trellis.rlhf import stage
from trellis.rlhf.samples import pick_sample_prompts


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sample_prompts_alternate_between_axes():
    prompts = [{"prompt": "h1", "axis": "helpfulness"}, {"prompt": "h2", "axis": "helpfulness"},
               {"prompt": "h3", "axis": "helpfulness"}, {"prompt": "s1", "axis": "harmlessness"}]
    assert pick_sample_prompts(prompts, 3) == ["h1", "s1", "h2"]
    assert pick_sample_prompts(prompts, 10) == ["h1", "s1", "h2", "h3"]
    assert pick_sample_prompts([{"prompt": "a"}, {"prompt": "b"}], 1) == ["a"]
    assert pick_sample_prompts(prompts, ["my own?"]) == ["my own?"]


def test_the_stage_writes_scored_samples_before_during_and_after(tmp_path, make_config, prompt_texts):
    config = make_config(steps=2, samples=SampleGenerations(every=1, prompts=3, max_new_tokens=4))
    stage.run(config, WorldConfig(), tmp_path)

    records = read_jsonl(tmp_path / "rlhf" / "samples.jsonl")
    assert [r["step"] for r in records] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["prompt"] for r in records[:3]] == prompt_texts[:3]
    assert all(isinstance(r["reward"], float) and isinstance(r["answer"], str) for r in records)
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert [r["step"] for r in summary["samples_initial"]] == [0, 0, 0]
    assert [r["step"] for r in summary["samples_final"]] == [2, 2, 2]
    assert summary["target_kl"] == config.target_kl
    assert summary["kl_steps_over_target"] in (0, 1, 2) and isinstance(summary["kl_max"], float)

    report = write_report(tmp_path, {"name": "t", "stages": ["rlhf"], "rlhf": summary}).read_text()
    section = report.split("## Samples", 1)[1]
    assert "### rlhf (step 2), against step 0" in section
    assert f"> {prompt_texts[0]}" in section and "**Before:**" in section and "**After:**" in section
    assert f"reward {summary['samples_final'][0]['reward']:.4g}" in section


def test_a_resumed_run_keeps_its_samples_once(tmp_path, make_config, monkeypatch):
    config = make_config(steps=2, save_every=1, samples=SampleGenerations(every=1, prompts=2, max_new_tokens=4))
    run_killed_after_step(config, tmp_path, monkeypatch, step=1)
    # a sample written after the checkpoint (as a kill between them would leave) is dropped on resume
    with (tmp_path / "rlhf" / "samples.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 2, "prompt": "stale", "answer": "", "stopped": True, "tokens": 0}) + "\n")
    stage.run(config, WorldConfig(), tmp_path)

    records = read_jsonl(tmp_path / "rlhf" / "samples.jsonl")
    assert [r["step"] for r in records] == [0, 0, 1, 1, 2, 2]
    assert "stale" not in {r["prompt"] for r in records}
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert [r["step"] for r in summary["samples_initial"]] == [0, 0]


def test_no_samples_unless_configured(tmp_path, make_config):
    stage.run(make_config(steps=1), WorldConfig(), tmp_path)
    assert not (tmp_path / "rlhf" / "samples.jsonl").exists()
    assert "samples_final" not in json.loads((tmp_path / "rlhf" / "summary.json").read_text())
