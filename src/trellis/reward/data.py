"""Comparison pairs for the reward model, always returned as conversational
`{"prompt": [messages], "chosen": [assistant msg], "rejected": [assistant msg], "axis": str | None}`.

Sources: the world's pairs (with an axis each), or a .json/.jsonl(.gz) file of either
`{prompt, chosen, rejected}` (strings or message lists, optional "axis") or Anthropic hh-rlhf transcripts
`{chosen, rejected}` ("\\n\\nHuman: ...\\n\\nAssistant: ..."), split into the shared conversation and the two
final assistant answers.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

from trellis.data.records import read_records
from trellis.errors import TrellisError
from trellis.sft.data import ROLES

Pair = dict[str, Any]
_TURN_RE = re.compile(r"\n\n(Human|Assistant):[ ]?")
ASSISTANT_TAG = "\n\nAssistant:"


def split_transcript(text: str) -> list[dict[str, str]]:
    """An hh-rlhf transcript as chat messages; text before the first speaker tag is an error."""
    parts = _TURN_RE.split(text)
    if parts[0].strip():
        raise ValueError("transcript does not start with '\\n\\nHuman:'")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise ValueError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return messages


def split_hh_pair(chosen: str, rejected: str) -> Pair:
    """Shared prompt and the two final assistant answers of an hh-rlhf pair.

    The split is the last "\n\nAssistant:" inside the text both transcripts share, as in TRL's hh-rlhf
    script: the real data has answers that themselves contain speaker tags, so parsing each transcript
    into turns and comparing them would reject good pairs.
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(ASSISTANT_TAG)
    if cut < 0:
        raise ValueError("chosen and rejected transcripts share no conversation ending in '\n\nAssistant:'")
    prompt = split_transcript(chosen[:cut])
    if prompt[-1]["role"] != "user":
        raise ValueError("the shared conversation does not end with a Human turn")
    start = cut + len(ASSISTANT_TAG)
    return {"prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen[start:].strip()}],
            "rejected": [{"role": "assistant", "content": rejected[start:].strip()}]}


def _turns(value: Any, role: str, key: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value:
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise ValueError(f"{key}[{i}] must be {{role, content}}")
            out.append({"role": m["role"], "content": m["content"]})
        return out
    raise ValueError(f"'{key}' must be a string or a non-empty list of messages")


def record_to_pair(record: dict[str, Any]) -> Pair:
    if "chosen" not in record or "rejected" not in record:
        raise ValueError(f"expected 'chosen' and 'rejected' keys, got {sorted(record)}")
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        pair = {"prompt": _turns(record["prompt"], "user", "prompt"),
                "chosen": _turns(chosen, "assistant", "chosen"),
                "rejected": _turns(rejected, "assistant", "rejected")}
    elif isinstance(chosen, str) and isinstance(rejected, str):
        pair = split_hh_pair(chosen, rejected)
    else:  # conversations with an implicit prompt: everything before the last message
        c, r = _turns(chosen, "assistant", "chosen"), _turns(rejected, "assistant", "rejected")
        if c[:-1] != r[:-1]:
            raise ValueError("chosen and rejected conversations differ before the last message")
        pair = {"prompt": c[:-1], "chosen": c[-1:], "rejected": r[-1:]}
    axis = record.get("axis")
    pair["axis"] = str(axis) if axis is not None else None
    return pair


def load_pair_file(path: str | Path) -> list[Pair]:
    p = Path(path)
    pairs = []
    for number, record in read_records(p):
        try:
            pairs.append(record_to_pair(record))
        except ValueError as exc:
            raise TrellisError(f"{p}: line {number}: {exc}") from None
    return pairs


def _response_text(messages: list[dict[str, str]]) -> str:
    return "".join(m["content"] for m in messages)


def clean_pairs(pairs: list[Pair]) -> tuple[list[Pair], Counter]:
    """Drop pairs that teach nothing: identical answers or an empty answer. Returns (kept, dropped counts)."""
    kept, dropped = [], Counter()
    for pair in pairs:
        chosen, rejected = _response_text(pair["chosen"]).strip(), _response_text(pair["rejected"]).strip()
        if not chosen or not rejected:
            dropped["empty_response"] += 1
        elif chosen == rejected:
            dropped["identical"] += 1
        else:
            kept.append(pair)
    return kept, dropped


def split_heldout(pairs: list[Pair], fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n = int(round(len(pairs) * fraction))
    if fraction > 0 and len(pairs) >= 2:
        n = max(1, min(n, len(pairs) - 1))
    return [pairs[i] for i in order[n:]], [pairs[i] for i in order[:n]]


def _load_source(source: Any, heldout_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Train and held-out pairs of one file; each file is split on its own so every axis is held out."""
    pairs = load_pair_file(source.path)
    if source.limit is not None:
        pairs = pairs[: source.limit]
    if source.axis is not None:
        for pair in pairs:
            pair["axis"] = source.axis
    return split_heldout(pairs, heldout_fraction, seed)


def load_reward_pairs(data: Any, world_config: Any, heldout_fraction: float, seed: int
                      ) -> tuple[list[Pair], list[Pair], Counter]:
    """(train pairs, held-out pairs, dropped counts) for `RewardConfig.data`: "world", a path, or a list of
    sources ({path, axis, limit})."""
    if data == "world":
        from trellis.data.world import World

        world = World(world_config)
        train = [_world_pair(p) for p in world.comparison_pairs("train")]
        heldout = [_world_pair(p) for p in world.comparison_pairs("test")]
    else:
        from trellis.config.reward import PairSource

        sources = [PairSource(path=data)] if isinstance(data, str) else list(data)
        train, heldout = [], []
        for source in sources:
            t, h = _load_source(source, heldout_fraction, seed)
            train += t
            heldout += h
        # one shuffled stream, so a batch mixes the sources' axes
        random.Random(seed).shuffle(train)
    train, dropped_train = clean_pairs(train)
    heldout, dropped_heldout = clean_pairs(heldout)
    return train, heldout, dropped_train + dropped_heldout


def _world_pair(p: dict[str, Any]) -> Pair:
    return {"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "axis": p.get("axis"),
            "kind": p.get("kind")}
