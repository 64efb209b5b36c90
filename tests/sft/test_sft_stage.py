import json
from pathlib import Path

import pytest

from trellis.config import SFTConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.run import read_metrics
from trellis.sft import stage as sft_stage


def _arith_rows(n: int = 48) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 7, i % 5
        rows.append({"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                                  {"role": "assistant", "content": f"It is {a + b}."}]})
    return rows


@pytest.fixture
def arith_file(tmp_path) -> Path:
    p = tmp_path / "arith.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in _arith_rows()))
    return p


def _config(model: Path, data: Path, **kw) -> SFTConfig:
    base = dict(model=str(model), data=str(data), max_steps=40, batch_size=8, lr=3e-3, logging_steps=5,
                eval_steps=20, save_steps=20, eval_fraction=0.1, warmup_ratio=0.0)
    return SFTConfig(**(base | kw))


def test_loss_mask_covers_only_assistant_tokens(tiny_chat_checkpoint, tmp_path):
    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.run import StageRun

    tok = load_tokenizer(tiny_chat_checkpoint)
    assert sft_stage.prepare_tokenizer(tok, tiny_chat_checkpoint) is True
    model = load_causal_lm(tiny_chat_checkpoint)
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                          {"role": "assistant", "content": "Goodbye!"}]},
            {"messages": [{"role": "user", "content": "What is 2 plus 2?"},
                          {"role": "assistant", "content": "It is 4."}]}]
    run = StageRun(tmp_path, "sft", tensorboard=False)
    trainer = sft_stage.make_trainer(_config(tiny_chat_checkpoint, tmp_path), run, model, tok, rows, [], True)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    for i, expected in enumerate(["Hello.<|im_end|>Goodbye!<|im_end|>", "It is 4.<|im_end|>"]):
        labels = batch["labels"][i]
        kept = labels[labels != -100].tolist()
        assert tok.decode(kept) == expected
        # user/system turns, headers and padding carry no loss
        assert (labels == -100).sum() > 0
    assert batch["labels"].shape == batch["input_ids"].shape


def test_foreign_template_falls_back_to_completion_only(tiny_chat_checkpoint):
    from trellis.checkpoint import load_tokenizer

    tok = load_tokenizer(tiny_chat_checkpoint)
    tok.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert sft_stage.prepare_tokenizer(tok, tiny_chat_checkpoint) is False
    rows = sft_stage.to_trainer_rows(_arith_rows(1), assistant_masks=False)
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["completion"][0]["role"] == "assistant"


def test_sft_lowers_loss_stops_and_reloads(tiny_chat_checkpoint, arith_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    final = sft_stage.run(_config(tiny_chat_checkpoint, arith_file), WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "sft" / "summary.json").read_text())
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "sft" / "metrics.jsonl") if "loss" in r]
    assert summary["status"] == "done" and summary["steps"] == 40
    assert losses[-1] < 0.5 * losses[0]
    assert summary["train_loss_final"] == pytest.approx(losses[-1])
    assert summary["eval_loss_final"] is not None and summary["examples"] == 48
    assert summary["truncated_examples"] == 0
    assert (tmp_path / "run" / "sft" / "tb").is_dir()

    # the output is a plain Hugging Face checkpoint
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    gen = GenerationConfig.from_pretrained(final)
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    assert gen.eos_token_id == [im_end, eot]

    # a trained model ends its answer with <|im_end|> instead of running to max_new_tokens
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    assert new[-1] == im_end and len(new) < 24
    assert tok.decode(new, skip_special_tokens=True).startswith("It is")
    assert all(s["stopped"] for s in summary["samples"])


def test_resume_from_trainer_checkpoint(tiny_chat_checkpoint, arith_file, tmp_path):
    root = tmp_path / "run"
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=10, save_steps=5), WorldConfig(), root)
    assert (root / "sft" / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists()
    # a half-written checkpoint (no trainer_state.json) is ignored
    (root / "sft" / "checkpoints" / "checkpoint-15").mkdir()
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=20, save_steps=5), WorldConfig(), root)
    summary = json.loads((root / "sft" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-10") and summary["steps"] == 20
    train_steps = [r["step"] for r in read_metrics(root / "sft" / "metrics.jsonl") if "loss" in r]
    assert train_steps == sorted(set(train_steps))


def test_bad_model_path_is_one_line_error(arith_file, tmp_path):
    with pytest.raises(TrellisError, match="checkpoint directory not found"):
        sft_stage.run(_config(tmp_path / "nope", arith_file), WorldConfig(), tmp_path / "run")


def test_over_length_examples_are_counted(tiny_chat_checkpoint):
    from trellis.checkpoint import load_tokenizer

    tok = load_tokenizer(tiny_chat_checkpoint)
    rows = _arith_rows(3) + [{"messages": [{"role": "user", "content": "fox " * 200},
                                           {"role": "assistant", "content": "ok"}]}]
    assert sft_stage.count_over_length(tok, rows, max_length=64) == 1
