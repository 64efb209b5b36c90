"""PPO prompts from comparison pairs: hh-rlhf transcripts, and the pairs the reward stage held out."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trellis.config import RewardConfig, dump_yaml
from trellis.errors import TrellisError
from trellis.reward.data import load_reward_pairs
from trellis.rlhf.prompts import REWARD_HELDOUT, load_prompt_file, load_prompts

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf"


def transcript(*turns: str) -> str:
    """'\\n\\nHuman: a\\n\\nAssistant: b...' from alternating turns, Human first."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def hh_record(question: str, chosen: str = "Sure, here is how.", rejected: str = "No.", *history: str) -> dict:
    return {"chosen": transcript(*history, question, chosen), "rejected": transcript(*history, question, rejected)}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def reward_stage_dir(root: Path, config: RewardConfig) -> Path:
    """A reward stage's directory as the stage leaves it: config.yaml beside final/; returns final/."""
    (root / "reward" / "final").mkdir(parents=True)
    dump_yaml(config, root / "reward" / "config.yaml")
    return root / "reward" / "final"


def test_hh_transcripts_give_their_single_turn_prompts(tmp_path):
    records = [
        hh_record("How do I bake bread?"),
        # an answer containing a speaker tag must not confuse the split
        hh_record("Write a dialogue.", "Human: hi\n\nAssistant: hello", "No."),
        hh_record("And then?", "Then knead.", "No.", "How do I bake bread?", "Mix flour and water."),
        hh_record("How do I bake bread?", "Preheat the oven.", "Buy some."),
    ]
    prompts = load_prompt_file(write_jsonl(tmp_path / "pairs.jsonl.gz", records))
    # the multi-turn conversation is left out (rollouts render one user turn) and the repeat is kept once
    assert [p["prompt"] for p in prompts] == ["How do I bake bread?", "Write a dialogue."]


def test_plain_prompt_files_still_load(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Hi?"}, {"prompt": "Why?", "kind": "x"}])
    assert [p["prompt"] for p in load_prompt_file(path)] == ["Hi?", "Why?"]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", "rejected": "\\n\\nHuman: a\\n\\nAssistant: c"}', "{oops"],
     r"pairs.jsonl: line 2: invalid JSON"),
    ([json.dumps(hh_record("a?")), json.dumps({"chosen": transcript("a?", "b")})],
     r"pairs.jsonl: line 2: expected a comparison pair with 'chosen' and 'rejected'"),
    ([json.dumps(hh_record("a?")), json.dumps({"chosen": "no tags", "rejected": "no tags either"})],
     r"pairs.jsonl: line 2: chosen and rejected transcripts share no conversation ending in '\\n\\nAssistant:'$"),
    ([json.dumps(hh_record("And then?", "x", "y", "First?", "Answer."))], r"pairs.jsonl: no pair has a single-turn"),
])
def test_bad_pair_files_name_the_file_and_line(tmp_path, lines, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrellisError, match=message):
        load_prompt_file(path)


@pytest.mark.skipif(not (HH / "helpful-base_test.jsonl.gz").exists(), reason="no shared hh-rlhf data")
def test_reward_heldout_prompts_never_occur_in_the_reward_stages_training_pairs(tmp_path):
    # a fraction and seed other than the defaults: prompts must come from the reward stage's own split
    config = RewardConfig(data=[{"path": str(HH / "helpful-base_test.jsonl.gz"), "axis": "helpfulness",
                                 "limit": 400},
                                {"path": str(HH / "harmless-base_test.jsonl.gz"), "axis": "harmlessness",
                                 "limit": 400}],
                          heldout_fraction=0.3, seed=7)
    prompts = load_prompts(REWARD_HELDOUT, None, reward_stage_dir(tmp_path, config))

    train, heldout, _ = load_reward_pairs(config.data, None, config.heldout_fraction, config.seed)
    trained_user_turns = {m["content"] for pair in train for m in pair["prompt"] if m["role"] == "user"}
    heldout_single_turn = {pair["prompt"][0]["content"] for pair in heldout if len(pair["prompt"]) == 1}
    texts = [p["prompt"] for p in prompts]
    assert len(texts) > 40 and len(set(texts)) == len(texts)
    assert not set(texts) & trained_user_turns
    assert set(texts) <= heldout_single_turn
    assert {p["axis"] for p in prompts} == {"helpfulness", "harmlessness"}


def test_a_heldout_prompt_that_reward_training_also_saw_is_left_out(tmp_path):
    # the same question in many pairs lands on both sides of the split
    records = [hh_record("Same question?", f"Answer {i}.", "No.") for i in range(20)]
    records += [hh_record(f"Question {i}?") for i in range(20)]
    data = write_jsonl(tmp_path / "pairs.jsonl", records)
    final = reward_stage_dir(tmp_path, RewardConfig(data=str(data), heldout_fraction=0.5, seed=3))
    texts = [p["prompt"] for p in load_prompts(REWARD_HELDOUT, None, final)]
    assert "Same question?" not in texts
    assert texts and all(t.startswith("Question ") for t in texts)


def test_reward_heldout_errors_name_what_is_missing(tmp_path):
    with pytest.raises(TrellisError, match=r"reward_heldout needs rlhf.reward_model"):
        load_prompts(REWARD_HELDOUT, None, None)
    with pytest.raises(TrellisError, match=r"config.yaml, which does not exist"):
        load_prompts(REWARD_HELDOUT, None, tmp_path / "somewhere" / "final")
    world_final = reward_stage_dir(tmp_path / "w", RewardConfig(data="world"))
    with pytest.raises(TrellisError, match=r"world's pairs; use rlhf.prompts: world"):
        load_prompts(REWARD_HELDOUT, None, world_final)
    gone = reward_stage_dir(tmp_path / "g", RewardConfig(data=str(tmp_path / "moved.jsonl")))
    with pytest.raises(TrellisError, match=r"reward_heldout \(reward config .*moved.jsonl: data file not found"):
        load_prompts(REWARD_HELDOUT, None, gone)
