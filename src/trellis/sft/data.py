"""SFT data: the world's instructions or a local file, always returned as chat `messages`.

A file is .json (an array, or JSON lines), .jsonl or .jsonl.gz, in one of three formats detected from its
first record: chat `{"messages": [...]}`, Alpaca `{instruction, input?, output}` or
`{prompt, completion}`. A record that does not fit fails naming the file and its line; a record whose
answer is blank is well formed but teaches nothing, and the stage drops and counts it
(`drop_empty_answers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.data.records import read_records
from trellis.errors import TrellisError

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant", "tool")


def detect_format(record: dict[str, Any]) -> str | None:
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise TrellisError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or msg.get("role") not in ROLES:
            raise TrellisError(f"{where}: messages[{i}] must be {{role: one of {'/'.join(ROLES)}, content: str}}")
        out.append({"role": msg["role"], "content": msg["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise TrellisError(f"{where}: no assistant message to train on")
    return out


def has_empty_answer(messages: list[dict[str, str]]) -> bool:
    """The answer being taught, the last assistant message, is blank."""
    return not next(m for m in reversed(messages) if m["role"] == "assistant")["content"].strip()


def drop_empty_answers(examples: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(examples with an answer, how many were left out): an empty answer would teach the model to
    stop at once."""
    kept = [ex for ex in examples if not has_empty_answer(ex["messages"])]
    return kept, len(examples) - len(kept)


def _as_turns(value: Any, role: str, where: str, key: str) -> list[dict[str, str]]:
    """A prompt/completion field: a plain string or a list of chat messages."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return [_check_messages_loose(m, where, key, i) for i, m in enumerate(value)]
    raise TrellisError(f"{where}: '{key}' must be a string or a list of messages")


def _check_messages_loose(msg: Any, where: str, key: str, i: int) -> dict[str, str]:
    if not isinstance(msg, dict) or not isinstance(msg.get("content"), str) or msg.get("role") not in ROLES:
        raise TrellisError(f"{where}: {key}[{i}] must be {{role, content}}")
    return {"role": msg["role"], "content": msg["content"]}


def record_to_messages(record: dict[str, Any], fmt: str, where: str) -> list[dict[str, str]]:
    if fmt == "messages":
        return _check_messages(record.get("messages"), where)
    if fmt == "alpaca":
        instruction, extra, output = record.get("instruction"), record.get("input", ""), record.get("output")
        if not isinstance(instruction, str) or not isinstance(output, str) or not isinstance(extra, str | None):
            raise TrellisError(f"{where}: Alpaca record needs string 'instruction' and 'output' (and 'input')")
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return _check_messages([{"role": "user", "content": user}, {"role": "assistant", "content": output}],
                               where)
    if fmt == "prompt_completion":
        prompt = _as_turns(record.get("prompt"), "user", where, "prompt")
        completion = _as_turns(record.get("completion"), "assistant", where, "completion")
        return _check_messages(prompt + completion, where)
    raise ValueError(f"unknown SFT format {fmt}")


def load_sft_file(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(detected format, [{"messages": [...]}]) from a data file."""
    p = Path(path)
    records = read_records(p)
    first_line, first = records[0]
    fmt = detect_format(first)
    if fmt is None:
        raise TrellisError(
            f"{p}: line {first_line}: unknown SFT format (keys {sorted(first)}); expected 'messages', "
            "'instruction'+'output' (Alpaca) or 'prompt'+'completion'"
        )
    examples = []
    for number, record in records:
        where = f"{p}: line {number}"
        if detect_format(record) != fmt:
            raise TrellisError(f"{where}: record does not match the file's {fmt} format (keys {sorted(record)})")
        examples.append({"messages": record_to_messages(record, fmt, where)})
    return fmt, examples


def load_sft_examples(data: str, world_config: Any = None) -> tuple[str, list[dict[str, Any]]]:
    """(source format, examples) for `SFTConfig.data`: "world" or a file path."""
    if data == "world":
        from trellis.data.world import World

        examples = World(world_config).sft_examples()
        return "world", [{"messages": _check_messages(ex["messages"], f"world example {i}")}
                         for i, ex in enumerate(examples)]
    return load_sft_file(data)
