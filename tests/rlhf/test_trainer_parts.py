import json

import pytest

from trellis.errors import TrellisError
from trellis.rlhf.monitor import RewardHackingMonitor
from trellis.rlhf.prompts import PromptOrder, load_prompt_file


def test_prompt_order_is_seeded_covers_every_prompt_and_resumes():
    order = PromptOrder(5, seed=3)
    first = order.take(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    rest = order.take(7)
    assert sorted(rest[:5]) == [0, 1, 2, 3, 4]
    resumed = PromptOrder(5, seed=3, position=5)
    assert resumed.take(7) == rest
    assert PromptOrder(5, seed=4).take(5) != first or PromptOrder(5, seed=5).take(5) != first


def test_reward_hacking_monitor_flags_reward_up_gold_down(caplog):
    monitor = RewardHackingMonitor(window=4, gold_drop=0.02)
    flags = [monitor.update(r, g) for r, g in [(0.0, 0.5), (0.1, 0.5), (0.2, 0.51), (0.3, 0.5)]]
    assert flags == [False, False, False, False]  # reward up, gold flat: honest progress
    with caplog.at_level("WARNING", logger="trellis.rlhf"):
        flags = [monitor.update(r, g) for r, g in [(0.4, 0.45), (0.5, 0.40), (0.6, 0.35)]]
    assert flags[-1] and "reward hacking" in caplog.text
    restored = RewardHackingMonitor(4, 0.02)
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.update(0.7, 0.3) == monitor.update(0.7, 0.3)
    assert not RewardHackingMonitor(4, 0.02).update(1.0, 0.0)  # too little history


def test_prompt_files(tmp_path):
    good = tmp_path / "p.json"
    good.write_text(json.dumps([{"prompt": "a"}, "b"]))
    assert [p["prompt"] for p in load_prompt_file(good)] == ["a", "b"]
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrellisError, match="no prompts"):
        load_prompt_file(empty)
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps([{"text": "a"}]))
    with pytest.raises(TrellisError, match="item 1"):
        load_prompt_file(bad)
    with pytest.raises(TrellisError, match="not found"):
        load_prompt_file(tmp_path / "missing.jsonl")
