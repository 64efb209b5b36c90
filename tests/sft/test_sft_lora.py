"""LoRA SFT: adapters train, and final/ is the merged plain checkpoint with the adapter model's outputs."""

import json
from pathlib import Path

import pytest

from trellis.config import SFTConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.run import read_metrics
from trellis.sft import stage as sft_stage
from trellis.sft.samples import read_samples

LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj", "down_proj"]}


@pytest.fixture
def arith_file(tmp_path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"What is {i % 7} plus {i % 5}?"},
                          {"role": "assistant", "content": f"It is {i % 7 + i % 5}."}]} for i in range(48)]
    p = tmp_path / "arith.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _config(model: Path, data: Path, **kw) -> SFTConfig:
    base = dict(model=str(model), data=str(data), max_steps=30, batch_size=8, lr=3e-2, logging_steps=5,
                eval_steps=10, save_steps=10, eval_fraction=0.1, warmup_ratio=0.0, lora=LORA)
    return SFTConfig(**(base | kw))


def test_lora_merged_export_matches_adapter_model(tiny_chat_checkpoint, arith_file, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path / "run"
    samples = {"every": 10, "prompts": ["What is 3 plus 4?"], "max_new_tokens": 8}
    final = sft_stage.run(_config(tiny_chat_checkpoint, arith_file, samples=samples), WorldConfig(), root)
    summary = json.loads((root / "sft" / "summary.json").read_text())
    # the LoRA model generates while it trains, through the same engine as a full model
    records = read_samples(root / "sft")
    assert [(r["step"], r["prompt"]) for r in records] == [(step, "What is 3 plus 4?") for step in (10, 20, 30)]
    assert summary["samples"] == records[-1:]
    losses = [r["loss"] for r in read_metrics(root / "sft" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < 0.9 * losses[0]  # a random tiny model: LoRA alone moves it slowly
    assert 0 < summary["lora"]["fraction"] < 0.5

    # final/ holds plain weights under the base model's names, no adapter tensors
    with safe_open(str(final / "model.safetensors"), "pt") as fh:
        keys = list(fh.keys())
    assert keys and not any("lora" in k for k in keys)

    tok = AutoTokenizer.from_pretrained(final)
    batch = tok(["<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n"], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(final).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_checkpoint).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_chat_checkpoint),
                                        root / "sft" / "adapter").eval()
    with torch.no_grad():
        merged_logits = merged(**batch).logits
        adapter_logits = adapter(**batch).logits
        base_logits = base(**batch).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-2)  # the adapters did learn something


def test_lora_resumes_from_adapter_checkpoint(tiny_chat_checkpoint, arith_file, tmp_path):
    root = tmp_path / "run"
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=10, save_steps=5), WorldConfig(), root)
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=15, save_steps=5), WorldConfig(), root)
    summary = json.loads((root / "sft" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-10") and summary["steps"] == 15


def test_unknown_target_module_names_the_key(tiny_chat_checkpoint, arith_file, tmp_path):
    cfg = _config(tiny_chat_checkpoint, arith_file, lora=LORA | {"target_modules": ["query_key_value"]})
    with pytest.raises(TrellisError, match=r"sft.lora.target_modules: \['query_key_value'\]"):
        sft_stage.run(cfg, WorldConfig(), tmp_path / "run")
