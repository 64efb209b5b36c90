"""Pairs as token ids, rendered with the checkpoint's chat template (prompt + answer, as TRL would), so
training, the length limit and the held-out diagnostics all see the same ids."""

from __future__ import annotations

from collections import Counter
from typing import Any

from trellis.reward.data import Pair


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def tokenize_pairs(tokenizer: Any, pairs: list[Pair], max_length: int | None, over_length: str = "drop"
                   ) -> tuple[list[dict[str, Any]], Counter]:
    """Rows {chosen_ids, rejected_ids, axis, kind, chosen_len, rejected_len} and what the length limit did.

    A pair over max_length is dropped, or ("truncate") both sequences lose their oldest tokens: the reward
    is read at the last token, so the answers and the end of the conversation are what must survive.
    """
    rows, counts = [], Counter()
    for pair in pairs:
        chosen = _ids(tokenizer, pair["prompt"] + pair["chosen"])
        rejected = _ids(tokenizer, pair["prompt"] + pair["rejected"])
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            if over_length == "drop":
                counts["over_max_length"] += 1
                continue
            counts["truncated"] += 1
            chosen, rejected = chosen[-max_length:], rejected[-max_length:]
        lengths = [len(tokenizer("".join(m["content"] for m in pair[k]), add_special_tokens=False)["input_ids"])
                   for k in ("chosen", "rejected")]
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "axis": pair.get("axis"),
                     "kind": pair.get("kind"), "chosen_len": lengths[0], "rejected_len": lengths[1]})
    return rows, counts
