import json
import random
from pathlib import Path

import pytest

from trellis.config import RewardConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.reward import stage as reward_stage

GOOD = ["Sure, here is a clear answer.", "Yes, gladly: the answer is below.", "Of course, happy to help."]
BAD = ["I refuse, go away now you.", "No. Not telling you that.", "Whatever, figure it out."]


@pytest.fixture
def easy_pairs(tmp_path) -> Path:
    """Pairs whose chosen answer is always from GOOD: a few steps should separate them on both axes."""
    rng = random.Random(0)
    rows = []
    for i in range(160):
        rows.append({"prompt": f"Question number {rng.randint(0, 99)}?", "chosen": rng.choice(GOOD),
                     "rejected": rng.choice(BAD), "axis": "helpfulness" if i % 2 else "harmlessness"})
    rows.append({"prompt": "q", "chosen": "same", "rejected": "same"})
    p = tmp_path / "pairs.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _config(model: Path, data: Path, **kw) -> RewardConfig:
    base = dict(model=str(model), data=str(data), max_steps=30, batch_size=8, lr=1e-3, logging_steps=5,
                eval_steps=15, save_steps=15, heldout_fraction=0.25, warmup_ratio=0.0)
    return RewardConfig(**(base | kw))


def test_reward_training_separates_pairs(tiny_chat_checkpoint, easy_pairs, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    final = reward_stage.run(_config(tiny_chat_checkpoint, easy_pairs), WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "reward" / "summary.json").read_text())
    acc = summary["accuracy"]
    assert set(acc) == {"helpfulness", "harmlessness", "overall"}
    assert all(v >= 0.9 for v in acc.values())
    assert acc["overall"] >= summary["accuracy_initial"]["overall"]
    # a random score head barely separates the answers; training opens a clear margin
    assert abs(summary["margin_mean_initial"]) < 0.5 < 1.0 < summary["margin_mean"]
    assert summary["margin_mean"] > 0 and summary["dropped_pairs"] == {"identical": 1}
    assert summary["heldout_pairs"] + summary["train_pairs"] == 160 and "length_correlation" in summary
    config = AutoConfig.from_pretrained(final)
    assert config.num_labels == 1 and config.pad_token_id is not None
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert (final / "tokenizer.json").exists()


def test_reward_resumes(tiny_chat_checkpoint, easy_pairs, tmp_path):
    root = tmp_path / "run"
    reward_stage.run(_config(tiny_chat_checkpoint, easy_pairs, max_steps=6, save_steps=3), WorldConfig(), root)
    reward_stage.run(_config(tiny_chat_checkpoint, easy_pairs, max_steps=9, save_steps=3), WorldConfig(), root)
    summary = json.loads((root / "reward" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-6") and summary["steps"] == 9


def test_max_length_drops_everything_is_an_error(tiny_chat_checkpoint, easy_pairs, tmp_path):
    with pytest.raises(TrellisError, match="reward.max_length"):
        reward_stage.run(_config(tiny_chat_checkpoint, easy_pairs, max_length=4), WorldConfig(), tmp_path / "r")


def test_over_length_pairs_dropped_or_truncated_from_the_left(tiny_chat_checkpoint):
    from trellis.checkpoint import load_tokenizer
    from trellis.reward.tokenize import tokenize_pairs

    tok = load_tokenizer(tiny_chat_checkpoint)
    long_prompt = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 20}]
    pairs = [{"prompt": long_prompt, "chosen": [{"role": "assistant", "content": "Yes."}],
              "rejected": [{"role": "assistant", "content": "No."}], "axis": None},
             {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
              "rejected": [{"role": "assistant", "content": "Go."}], "axis": None}]
    rows, counts = tokenize_pairs(tok, pairs, max_length=32, over_length="drop")
    assert len(rows) == 1 and counts == {"over_max_length": 1}
    rows, counts = tokenize_pairs(tok, pairs, max_length=32, over_length="truncate")
    assert len(rows) == 2 and counts == {"truncated": 1} and len(rows[0]["chosen_ids"]) == 32
    # the answers being compared survive the cut
    assert tok.decode(rows[0]["chosen_ids"]).rstrip().endswith("Yes.<|im_end|>")


@pytest.mark.parametrize("heads", [None, ["helpfulness", "harmlessness"]])
def test_margin_enters_the_loss(tiny_chat_checkpoint, easy_pairs, tmp_path, heads):
    from trellis.run import read_metrics

    def first_loss(margin: float, root: Path) -> float:
        reward_stage.run(_config(tiny_chat_checkpoint, easy_pairs, max_steps=1, logging_steps=1, margin=margin,
                                 heads=heads, center_rewards_coefficient=None, heldout_fraction=0.0),
                         WorldConfig(), root)
        return [r["loss"] for r in read_metrics(root / "reward" / "metrics.jsonl") if "loss" in r][0]

    # a fresh score head gives rewards near 0: loss ~ log 2 without a margin, ~ log(1 + e) with margin 1
    assert first_loss(0.0, tmp_path / "a") < 0.8 < 1.2 < first_loss(1.0, tmp_path / "b")


@pytest.mark.parametrize("over_length", ["drop", "truncate"])
def test_bad_pairs_are_counted_in_the_summary(tiny_chat_checkpoint, easy_pairs, tmp_path, over_length):
    long_pair = {"prompt": "The quick brown fox jumps over the lazy dog. " * 20, "chosen": "Yes.", "rejected": "No.",
                 "axis": "helpfulness"}
    empty = {"prompt": "q", "chosen": "fine", "rejected": " ", "axis": "helpfulness"}
    data = tmp_path / "bad.jsonl"
    data.write_text(easy_pairs.read_text() + "".join(json.dumps(r) + "\n" for r in (long_pair, empty)))
    config = _config(tiny_chat_checkpoint, data, max_steps=1, max_length=64, over_length=over_length,
                     heldout_fraction=0.0)
    reward_stage.run(config, WorldConfig(), tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "reward" / "summary.json").read_text())
    if over_length == "drop":
        assert summary["dropped_pairs"] == {"identical": 1, "empty_response": 1, "over_max_length": 1}
        assert summary["truncated_pairs"] == 0 and summary["train_pairs"] == 160
    else:
        assert summary["dropped_pairs"] == {"identical": 1, "empty_response": 1}
        assert summary["truncated_pairs"] == 1 and summary["train_pairs"] == 161
