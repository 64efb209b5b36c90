import gzip
import json

import pytest

from trellis.data.records import read_records, read_values
from trellis.errors import TrellisError


def test_every_format_gives_values_with_their_line(tmp_path):
    (tmp_path / "a.json").write_text('[\n  {"x": 1},\n\n  {"x": 2}\n]\n')
    assert read_records(tmp_path / "a.json") == [(2, {"x": 1}), (4, {"x": 2})]
    (tmp_path / "b.jsonl").write_text('{"x": 1}\n\n"text"\n')
    assert read_values(tmp_path / "b.jsonl") == [(1, {"x": 1}), (3, "text")]
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"x": 3}) + "\n")
    assert read_records(tmp_path / "c.jsonl.gz") == [(1, {"x": 3})]


@pytest.mark.parametrize("name,text,message", [
    ("bad.jsonl", '{"x": 1}\n{"x": \n', r"bad\.jsonl: line 2: invalid JSON"),
    ("bad.json", '[\n{"x": 1},\n{"x" 2}\n]', r"bad\.json: line 3: invalid JSON"),
    ("list.jsonl", '{"x": 1}\n[1, 2]\n', r"list\.jsonl: line 2: expected a JSON object, got list"),
    ("empty.jsonl", "\n\n", r"empty\.jsonl: prompts file has no records"),
])
def test_errors_name_the_file_and_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(TrellisError, match=message):
        read_records(tmp_path / name, what="prompts file")


def test_missing_directory_and_broken_gzip_are_named(tmp_path):
    with pytest.raises(TrellisError, match=r"nope\.jsonl: data file not found"):
        read_records(tmp_path / "nope.jsonl")
    with pytest.raises(TrellisError, match="got a directory"):
        read_records(tmp_path)
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(TrellisError, match=r"broken\.jsonl\.gz: cannot read data file"):
        read_records(tmp_path / "broken.jsonl.gz")
