import json
from pathlib import Path

import pytest

from trellis.config import SFTConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.run import read_metrics
from trellis.sft import stage as sft_stage
from trellis.sft.samples import read_samples


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
    assert summary["truncated_examples"] == 0 and summary["dropped_examples"] == {}
    assert (tmp_path / "run" / "sft" / "tb").is_dir()
    # eval loss on the held-out split every eval_steps during training, and once more at the end
    evals = [(r["step"], r["eval_loss"]) for r in read_metrics(tmp_path / "run" / "sft" / "metrics.jsonl")
             if "eval_loss" in r]
    assert [step for step, _ in evals] == [20, 40, 40]
    assert evals[-1][1] == pytest.approx(summary["eval_loss_final"]) and evals[-1][1] < evals[0][1] * 1.5

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
    samples = {"every": 5, "prompts": 1, "max_new_tokens": 4}
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=10, save_steps=5, samples=samples),
                  WorldConfig(), root)
    assert (root / "sft" / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists()
    # a half-written checkpoint (no trainer_state.json) is ignored
    (root / "sft" / "checkpoints" / "checkpoint-15").mkdir()
    # as if the first run had got further before it was killed: its later samples are dropped
    with (root / "sft" / "samples.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": 12, "prompt": "p", "answer": "a", "stopped": True, "tokens": 1}) + "\n")
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=20, save_steps=5, samples=samples),
                  WorldConfig(), root)
    summary = json.loads((root / "sft" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-10") and summary["steps"] == 20
    train_steps = [r["step"] for r in read_metrics(root / "sft" / "metrics.jsonl") if "loss" in r]
    assert train_steps == sorted(set(train_steps))
    assert [r["step"] for r in read_samples(root / "sft")] == [5, 10, 15, 20]


def test_samples_every_n_steps_and_at_the_end(tiny_chat_checkpoint, arith_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "run"
    config = _config(tiny_chat_checkpoint, arith_file, max_steps=10, save_steps=10,
                     samples={"every": 4, "prompts": 2, "max_new_tokens": 6})
    sft_stage.run(config, WorldConfig(), root)
    records = read_samples(root / "sft")
    assert [r["step"] for r in records] == [4, 4, 8, 8, 10, 10]
    # the same fixed prompts each time: the first user turns of the held-out split, never trained on
    _, eval_ex = sft_stage.split_examples(_arith_rows(), config.eval_fraction, config.seed)
    held_out = [ex["messages"][0]["content"] for ex in eval_ex[:2]]
    assert [r["prompt"] for r in records] == held_out * 3
    assert all(0 < r["tokens"] <= 6 and isinstance(r["answer"], str) for r in records)
    summary = json.loads((root / "sft" / "summary.json").read_text())
    assert summary["samples"] == records[-2:]
    events = EventAccumulator(str(root / "sft" / "tb")).Reload()
    assert [e.step for e in events.Tensors("sft/samples/text_summary")] == [4, 8, 10]


def test_disabled_samples_write_none(tiny_chat_checkpoint, arith_file, tmp_path):
    root = tmp_path / "run"
    sft_stage.run(_config(tiny_chat_checkpoint, arith_file, max_steps=4, samples=None), WorldConfig(), root)
    assert not (root / "sft" / "samples.jsonl").exists()
    assert "samples" not in json.loads((root / "sft" / "summary.json").read_text())


def test_sample_settings_are_checked():
    with pytest.raises(ValueError, match="at least 1 prompt"):
        SFTConfig(samples={"prompts": 0})
    with pytest.raises(ValueError, match="non-empty list"):
        SFTConfig(samples={"prompts": ["ok", " "]})
    with pytest.raises(ValueError, match="every"):
        SFTConfig(samples={"every": 0})


@pytest.mark.parametrize("over_length", ["drop", "truncate"])
def test_empty_answers_dropped_and_over_length_dropped_or_truncated(tiny_chat_checkpoint, tmp_path, over_length):
    rows = _arith_rows(8) + [
        {"messages": [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": " "}]},
        # the last answer is the one taught: an earlier answer does not save an empty last one
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "And?"}, {"role": "assistant", "content": ""}]},
        {"messages": [{"role": "user", "content": "fox " * 200}, {"role": "assistant", "content": "ok"}]},
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = _config(tiny_chat_checkpoint, data, max_steps=1, max_length=64, eval_fraction=0.0, samples=None,
                     over_length=over_length)
    sft_stage.run(config, WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "sft" / "summary.json").read_text())
    if over_length == "drop":
        assert summary["dropped_examples"] == {"empty_answer": 2, "over_max_length": 1}
        assert summary["truncated_examples"] == 0 and summary["examples"] == 8
    else:
        assert summary["dropped_examples"] == {"empty_answer": 2}
        assert summary["truncated_examples"] == 1 and summary["examples"] == 9


def test_every_example_over_length_with_drop_is_an_error(tiny_chat_checkpoint, arith_file, tmp_path):
    config = _config(tiny_chat_checkpoint, arith_file, max_length=4, over_length="drop")
    with pytest.raises(TrellisError, match="sft.max_length: every example is longer than 4 tokens"):
        sft_stage.run(config, WorldConfig(), tmp_path / "run")


def test_bad_model_path_is_one_line_error(arith_file, tmp_path):
    with pytest.raises(TrellisError, match="checkpoint directory not found"):
        sft_stage.run(_config(tmp_path / "nope", arith_file), WorldConfig(), tmp_path / "run")


def test_over_length_examples_are_counted(tiny_chat_checkpoint):
    from trellis.checkpoint import load_tokenizer

    tok = load_tokenizer(tiny_chat_checkpoint)
    rows = _arith_rows(3) + [{"messages": [{"role": "user", "content": "fox " * 200},
                                           {"role": "assistant", "content": "ok"}]}]
    assert [sft_stage.is_over_length(tok, row, max_length=64) for row in rows] == [False, False, False, True]
