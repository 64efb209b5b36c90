"""Reading JSON data files: a .json array, or JSON Lines (.jsonl, optionally gzipped), each value with the
line it starts on, so that every stage's errors name the file and the line alike ("FILE: line N: ...")."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def read_text(path: Path, what: str = "data file") -> str:
    """The file's text, gunzipped when its name ends in .gz."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                return fh.read()
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise TrellisError(f"{path}: cannot read {what}: {exc}") from None


def parse_json_lines(path: Path, text: str) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line."""
    values = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise TrellisError(f"{path}: line {number}: invalid JSON ({exc.msg})") from None
    return values


def _array_line_numbers(text: str, count: int) -> list[int]:
    """Line where each element of a top-level JSON array starts (for error messages)."""
    decoder = json.JSONDecoder()
    lines: list[int] = []
    pos = text.index("[") + 1
    for _ in range(count):
        while text[pos] in " \t\r\n,":
            pos += 1
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def read_values(path: str | Path, what: str = "data file") -> list[tuple[int, Any]]:
    """(line number, value) of every element of a .json(.gz) array or every line of a JSON Lines file."""
    p = Path(path)
    if not p.exists():
        raise TrellisError(f"{p}: {what} not found")
    if p.is_dir():
        raise TrellisError(f"{p}: expected a .json or .jsonl {what}, got a directory")
    text = read_text(p, what)
    if p.name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrellisError(f"{p}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
        return list(zip(_array_line_numbers(text, len(items)), items, strict=True))
    return parse_json_lines(p, text)


def read_records(path: str | Path, what: str = "data file") -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every record of a .json / .jsonl / .jsonl.gz file; each must be an object."""
    p = Path(path)
    records = read_values(p, what)
    for number, record in records:
        if not isinstance(record, dict):
            raise TrellisError(f"{p}: line {number}: expected a JSON object, got {type(record).__name__}")
    if not records:
        raise TrellisError(f"{p}: {what} has no records")
    return records
