"""The real-data recipe (configs/smollm2-hh.yaml) on the real SmolLM2-135M-Instruct, cut to a few steps:
SFT on Alpaca rows, then a two-head reward model on hh-rlhf; losses fall and both checkpoints reload in
plain transformers."""

import json
from pathlib import Path

import pytest

from trellis.config import load_config
from trellis.run import read_metrics

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "hh-rlhf").exists(), reason="shared hh-rlhf sample not present")]


def _losses(stage_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(stage_dir / "metrics.jsonl") if "loss" in r]


def test_smollm2_recipe_few_steps(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from trellis.convert.smollm2 import smollm2_checkpoint
    from trellis.pipeline import run_pipeline

    model = smollm2_checkpoint()
    monkeypatch.chdir(REPO)  # the recipe's data paths are relative to the checkout
    # a handful of examples seen twice, so a few steps show the loss falling on a real model
    # the recipe's sft and reward stages (its GPU-sized rlhf stage is covered by tests/rlhf on tiny models)
    cfg = load_config(REPO / "configs" / "smollm2-hh.yaml", [
        "stages=[sft, reward]",
        f"sft.model={model}", "sft.max_examples=8", "sft.eval_fraction=0.25", "sft.epochs=3", "sft.batch_size=3",
        "sft.lr=1e-4", "sft.logging_steps=1", "sft.max_length=256",
        "reward.heads=[helpfulness, harmlessness]", "reward.max_length=192", "reward.max_steps=8",
        "reward.batch_size=4", "reward.lr=3e-5", "reward.logging_steps=1", "reward.heldout_fraction=0.34",
    ])
    for source in cfg.reward.data:
        source.limit = 12  # 8 train pairs per axis: 8 steps of 4 are two passes; 4 held out per axis
    run_pipeline(cfg, tmp_path / "run")

    sft = tmp_path / "run" / "sft"
    sft_summary = json.loads((sft / "summary.json").read_text())
    losses = _losses(sft)
    assert sft_summary["data_format"] == "alpaca" and sft_summary["steps"] == 6
    assert sum(losses[-2:]) < sum(losses[:2]) and all(0 < x < 10 for x in losses)
    assert sft_summary["samples"] and any(s["stopped"] for s in sft_summary["samples"])

    reward = tmp_path / "run" / "reward"
    summary = json.loads((reward / "summary.json").read_text())
    losses = _losses(reward)
    assert summary["steps"] == 8 and summary["pairs"] == {"helpfulness": 4, "harmlessness": 4, "overall": 8}
    assert sum(losses[4:]) < sum(losses[:4])  # the second pass over the same pairs fits them better
    assert 0 <= summary["calibration"]["ece"] <= 1 and summary["margin"]["std"] > 0
    assert summary["truncated_pairs"] > 0  # long hh-rlhf conversations are cut from the left and counted

    tok = AutoTokenizer.from_pretrained(sft / "final")
    lm = AutoModelForCausalLM.from_pretrained(sft / "final")
    rm = AutoModelForSequenceClassification.from_pretrained(reward / "final")
    batch = tok(["Human: hi\n\nAssistant: hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(lm(**batch).logits).all()
        assert rm(**batch).logits.shape == (1, 2)
