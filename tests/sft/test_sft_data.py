import gzip
import json
from pathlib import Path

import pytest

from trellis.errors import TrellisError
from trellis.sft.data import load_sft_examples, load_sft_file

ALPACA = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca/alpaca_data_first200.json"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_alpaca_array_with_and_without_input(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ], indent=2))
    fmt, examples = load_sft_file(p)
    assert fmt == "alpaca"
    assert examples[0]["messages"] == [{"role": "user", "content": "Add.\n\n2 and 3"},
                                       {"role": "assistant", "content": "5"}]
    assert examples[1]["messages"][0]["content"] == "Say hi."


@pytest.mark.skipif(not ALPACA.exists(), reason="shared Alpaca sample not present")
def test_real_alpaca_file():
    fmt, examples = load_sft_examples(str(ALPACA))
    assert fmt == "alpaca" and len(examples) == 200
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in examples)


def test_messages_jsonl(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    fmt, examples = load_sft_file(_jsonl(tmp_path / "m.jsonl", [{"messages": msgs}, {"messages": msgs[1:]}]))
    assert fmt == "messages" and examples[0]["messages"] == msgs and len(examples) == 2


def test_prompt_completion_strings_and_gzip(tmp_path):
    p = tmp_path / "pc.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(json.dumps({"prompt": "Capital of France?", "completion": "Paris."}) + "\n")
    fmt, examples = load_sft_file(p)
    assert fmt == "prompt_completion"
    assert examples[0]["messages"] == [{"role": "user", "content": "Capital of France?"},
                                       {"role": "assistant", "content": "Paris."}]


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    p = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, "", '{"prompt": "c", "completion": '])
    with pytest.raises(TrellisError, match=r"bad\.jsonl: line 3: invalid JSON"):
        load_sft_file(p)


def test_broken_json_array_names_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(TrellisError, match=r"bad\.json: line 3"):
        load_sft_file(p)


def test_record_of_another_format_names_line(tmp_path):
    p = _jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "completion": "b"}, {"instruction": "x", "output": "y"}])
    with pytest.raises(TrellisError, match=r"mixed\.jsonl: line 2: .*prompt_completion"):
        load_sft_file(p)


def test_unknown_format_and_missing_assistant(tmp_path):
    with pytest.raises(TrellisError, match="unknown SFT format"):
        load_sft_file(_jsonl(tmp_path / "u.jsonl", [{"text": "hello"}]))
    with pytest.raises(TrellisError, match="line 1: no assistant message"):
        load_sft_file(_jsonl(tmp_path / "n.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]))
    with pytest.raises(TrellisError, match="not found"):
        load_sft_file(tmp_path / "missing.jsonl")


def test_empty_answers_load_and_are_counted_when_dropped(tmp_path):
    from trellis.sft.data import drop_empty_answers

    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "Add.", "input": "2 and 3", "output": "5"},
                             {"instruction": "Say nothing.", "output": "  "}]))
    fmt, examples = load_sft_file(p)
    assert fmt == "alpaca" and len(examples) == 2
    kept, dropped = drop_empty_answers(examples)
    assert dropped == 1 and kept == examples[:1]


def test_world_examples_are_chat_messages():
    from trellis.config import WorldConfig

    source, examples = load_sft_examples("world", WorldConfig())
    assert source == "world" and len(examples) > 100
    assert all(ex["messages"][-1]["role"] == "assistant" for ex in examples)
