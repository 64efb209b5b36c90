import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from trellis.errors import TrellisError
from trellis.reward.data import clean_pairs, load_pair_file, load_reward_pairs, split_hh_pair
from trellis.reward.metrics import pairwise_metrics, pearson

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf/helpful-base_test.jsonl.gz"


@pytest.mark.skipif(not HH.exists(), reason="shared hh-rlhf sample not present")
def test_real_hh_rlhf_line_splits_into_prompt_and_answers():
    with gzip.open(HH, "rt") as fh:
        record = json.loads(fh.readline())
    pair = split_hh_pair(record["chosen"], record["rejected"])
    assert pair["prompt"] == [{"role": "user", "content":
                               "Do you know why turkeys became the official food of thanksgiving?"}]
    assert pair["chosen"][0]["role"] == "assistant"
    assert pair["chosen"][0]["content"].startswith("To be honest, I don’t know anything about that.")
    assert pair["rejected"][0]["content"].startswith("I know that the American Indians")


@pytest.mark.skipif(not HH.exists(), reason="shared hh-rlhf sample not present")
def test_hh_rlhf_gz_file_loads_multi_turn():
    pairs = load_pair_file(HH)
    assert len(pairs) > 100
    multi = next(p for p in pairs if len(p["prompt"]) > 1)
    assert [m["role"] for m in multi["prompt"]][:3] == ["user", "assistant", "user"]
    assert multi["prompt"][-1]["role"] == "user"
    assert all(p["axis"] is None for p in pairs)


def test_prompt_chosen_rejected_formats(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "axis": "helpfulness"},
        {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
         "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = load_pair_file(p)
    assert pairs[0] == {"prompt": [{"role": "user", "content": "Hi?"}],
                        "chosen": [{"role": "assistant", "content": "Hello!"}],
                        "rejected": [{"role": "assistant", "content": "Go away."}], "axis": "helpfulness"}
    assert pairs[1]["rejected"][0]["content"] == "No."
    assert pairs[2]["prompt"] == [{"role": "user", "content": "Q"}] and pairs[2]["chosen"][0]["content"] == "A"


def test_bad_lines_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n{broken\n")
    with pytest.raises(TrellisError, match=r"bad\.jsonl: line 2: invalid JSON"):
        load_pair_file(p)
    p.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    with pytest.raises(TrellisError, match=r"bad\.jsonl: line 1: expected 'chosen' and 'rejected'"):
        load_pair_file(p)
    p.write_text(json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: x\n\nAssistant: c"}))
    with pytest.raises(TrellisError, match="line 1: .*share no conversation"):
        load_pair_file(p)


def test_identical_and_empty_pairs_are_dropped_and_counted(tmp_path):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"},
            {"prompt": "q", "chosen": "  ", "rejected": "x"},
            {"prompt": "q", "chosen": "good", "rejected": "bad"}]
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, dropped = clean_pairs(load_pair_file(p))
    assert len(kept) == 1 and dropped == Counter(identical=1, empty_response=1)
    train, heldout, dropped = load_reward_pairs(str(p), None, heldout_fraction=0.5, seed=0)
    assert len(train) + len(heldout) == 1 and sum(dropped.values()) == 2


def test_pairwise_metrics():
    m = pairwise_metrics([1.0, 2.0, 0.0, 3.0], [0.0, 1.0, 1.0, 0.0], ["a", "a", "b", None], [5, 9, 2, 7], [3, 1, 8, 2])
    assert m["accuracy"] == {"a": 1.0, "b": 0.0, "overall": 0.75}
    assert m["pairs"] == {"a": 2, "b": 1, "overall": 4}
    assert m["margin_mean"] == pytest.approx(1.0)
    assert m["longer_chosen_rate"] == 0.75
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1, 1], [0, 1]) is None


def test_world_pairs_have_three_axes_and_a_test_split():
    from trellis.config import WorldConfig

    train, heldout, _ = load_reward_pairs("world", WorldConfig(), heldout_fraction=0.1, seed=0)
    assert {p["axis"] for p in heldout} == {"helpfulness", "harmlessness", "honesty"}
    assert len(train) > len(heldout) > 0
    assert heldout[0]["prompt"][0]["role"] == "user" and heldout[0]["chosen"][0]["role"] == "assistant"


def test_margin_distribution_and_calibration():
    from trellis.reward.metrics import calibration, margin_distribution

    d = margin_distribution([-1.0, 0.0, 1.0, 2.0, 3.0])
    assert d["median"] == 1.0 and d["min"] == -1.0 and d["max"] == 3.0 and d["negative_fraction"] == 0.2
    assert d["p25"] == pytest.approx(0.0) and d["p75"] == pytest.approx(2.0)
    # confident and always right: P(chosen) near 1 on every pair -> tiny ECE and log loss
    sure = calibration([8.0] * 10)
    assert sure["ece"] < 0.01 and sure["log_loss"] < 0.01 and sure["bins"][-1]["accuracy"] == 1.0
    # confident and right only half the time: the 0.9-1.0 bin shows the gap
    over = calibration([4.0] * 5 + [-4.0] * 5)
    assert over["ece"] == pytest.approx(0.982 - 0.5, abs=0.01) and over["bins"][-1]["accuracy"] == 0.5
    # unsure (P = 0.5) is calibrated on a coin flip's worth of pairs
    assert calibration([0.0] * 4)["log_loss"] == pytest.approx(0.6931, abs=1e-3)
    m = pairwise_metrics([1.0, 2.0], [0.0, 3.0], ["a", "a"], [9, 1], [1, 9])
    assert m["length_margin_correlation"] == pytest.approx(1.0)
    assert m["margin"]["mean"] == m["margin_mean"] == 0.0 and "calibration" in m


def test_pair_sources_tag_axes_limit_and_hold_out_each_file(tmp_path):
    from trellis.config.reward import PairSource

    files = []
    for name in ("a", "b"):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) + "\n"
                             for i in range(20)))
        files.append(p)
    sources = [PairSource(path=str(files[0]), axis="helpfulness", limit=10),
               PairSource(path=str(files[1]), axis="harmlessness")]
    train, heldout, _ = load_reward_pairs(sources, None, heldout_fraction=0.2, seed=0)
    assert len(train) + len(heldout) == 30
    assert sorted(p["axis"] for p in heldout) == ["harmlessness"] * 4 + ["helpfulness"] * 2
    assert all(int(p["prompt"][0]["content"][1:]) < 10 for p in train + heldout if p["axis"] == "helpfulness")
