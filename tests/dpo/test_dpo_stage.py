"""`trellis dpo`: DPOTrainer on comparison pairs moves the policy toward the chosen answers."""

import json
import random
from pathlib import Path

import pytest
import yaml

from trellis.errors import TrellisError

GOOD = ["Sure, here is a clear answer.", "Yes, gladly: the answer is below."]
BAD = ["Whatever, figure it out.", "No. Not telling you that."]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    rng = random.Random(0)
    rows = [{"prompt": f"Question number {rng.randint(0, 99)}?", "chosen": rng.choice(GOOD),
             "rejected": rng.choice(BAD), "axis": "helpfulness" if i % 2 else "harmlessness"} for i in range(64)]
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _write_config(tmp_path: Path, model: Path, data: Path, **kw) -> Path:
    cfg = dict(model=str(model), data=str(data), max_steps=16, batch_size=8, lr=5e-3, beta=0.1, logging_steps=4,
               eval_steps=8, save_steps=8, heldout_fraction=0.25, warmup_ratio=0.0, max_length=128) | kw
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dpo_cli_prefers_chosen_and_writes_plain_checkpoint(tiny_chat_checkpoint, pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from trellis.cli import main

    root = tmp_path / "run"
    assert main(["dpo", str(_write_config(tmp_path, tiny_chat_checkpoint, pairs_file)), "--run-dir", str(root)]) == 0
    summary = json.loads((root / "dpo" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 16
    assert summary["heldout_pairs"] == 16 and summary["train_pairs"] == 48
    # the implicit reward beta * log(pi / pi_ref) ranks held-out chosen answers first on both axes
    assert summary["accuracy"]["helpfulness"] >= 0.9 and summary["accuracy"]["harmlessness"] >= 0.9
    assert summary["margin_mean"] > 0 and summary["train_loss_final"] < 0.6931
    assert (root / "dpo" / "metrics.jsonl").exists() and (root / "dpo" / "tb").is_dir()
    model = AutoModelForCausalLM.from_pretrained(root / "dpo" / "final")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_dpo_lora_merges_on_export(tiny_chat_checkpoint, pairs_file, tmp_path):
    from trellis.config import WorldConfig
    from trellis.config.dpo import DPOConfig
    from trellis.dpo import stage as dpo_stage

    cfg = DPOConfig(model=str(tiny_chat_checkpoint), data=str(pairs_file), max_steps=4, batch_size=8, lr=1e-2,
                    logging_steps=2, save_steps=4, eval_steps=4, heldout_fraction=0.25, max_length=128,
                    lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    final = dpo_stage.run(cfg, WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "dpo" / "summary.json").read_text())
    assert 0 < summary["lora"]["fraction"] < 0.2
    assert (tmp_path / "run" / "dpo" / "adapter" / "adapter_config.json").exists()
    assert not (final / "adapter_config.json").exists()


def test_dpo_without_model_or_sft_run_is_named_error(pairs_file, tmp_path):
    from trellis.config import WorldConfig
    from trellis.config.dpo import DPOConfig
    from trellis.dpo import stage as dpo_stage

    with pytest.raises(TrellisError, match="dpo.model is not set"):
        dpo_stage.run(DPOConfig(data=str(pairs_file)), WorldConfig(), tmp_path / "run")


def test_dpo_resumes_from_its_last_checkpoint(tiny_chat_checkpoint, pairs_file, tmp_path):
    from trellis.config import WorldConfig
    from trellis.config.dpo import DPOConfig
    from trellis.dpo import stage as dpo_stage

    def config(steps: int) -> DPOConfig:
        return DPOConfig(model=str(tiny_chat_checkpoint), data=str(pairs_file), max_steps=steps, batch_size=8,
                         lr=1e-3, logging_steps=1, save_steps=2, eval_steps=100, heldout_fraction=0.25,
                         max_length=128)

    dpo_stage.run(config(4), WorldConfig(), tmp_path / "run")
    dpo_stage.run(config(6), WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "dpo" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-4") and summary["steps"] == 6
