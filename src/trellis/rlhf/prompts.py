"""RLHF prompts: where they come from, and a seeded, resumable order over them.

Sources (`rlhf.prompts`): "world" (the world's held-out RLHF prompts); a .json/.jsonl file of
{"prompt": ...}; a .jsonl(.gz) file of comparison pairs (Anthropic hh-rlhf {chosen, rejected} transcripts,
or {prompt, chosen, rejected}), whose prompt is the conversation before the final answer; or
"reward_heldout": the pairs the reward stage held out from its training, split by the reward stage's own
functions with its own data, limits, fraction and seed (read from its config.yaml beside `reward_model`).
Rollouts render a prompt as one user turn, so pair prompts are kept when they are a single Human turn.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from trellis.data.records import parse_json_lines, read_text
from trellis.errors import TrellisError

log = logging.getLogger("trellis.rlhf")
REWARD_HELDOUT = "reward_heldout"
PAIR_KEYS = ("chosen", "rejected")


def _is_pair_record(value: Any) -> bool:
    return isinstance(value, dict) and all(k in value for k in PAIR_KEYS)


def user_turns(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def prompts_of_pairs(pairs: list[dict[str, Any]], exclude: set[str] | frozenset[str] = frozenset()
                     ) -> tuple[list[dict[str, Any]], Counter]:
    """{"prompt", "axis"} of each pair whose prompt is one user turn, first occurrence only, leaving out
    prompts in `exclude`; and the counts of pairs skipped, by reason."""
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    skipped: Counter = Counter()
    for pair in pairs:
        messages = pair["prompt"]
        if len(messages) != 1 or messages[0]["role"] != "user" or not messages[0]["content"].strip():
            skipped["multi_turn"] += 1
            continue
        text = messages[0]["content"]
        if text in exclude:
            skipped["in_reward_training"] += 1
        elif text in seen:
            skipped["repeated"] += 1
        else:
            seen.add(text)
            items.append({"prompt": text, "axis": pair.get("axis")})
    return items, skipped


def _pair_file_prompts(p: Path, records: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    from trellis.reward.data import record_to_pair

    pairs = []
    for lineno, record in records:
        if not _is_pair_record(record):
            raise TrellisError(f"{p}: line {lineno}: expected a comparison pair with 'chosen' and 'rejected' like "
                               "the file's first line")
        try:
            pairs.append(record_to_pair(record))
        except ValueError as exc:
            # one line: the reward loader's messages quote speaker tags with their newlines
            raise TrellisError(f"{p}: line {lineno}: " + str(exc).replace("\n", "\\n")) from None
    items, skipped = prompts_of_pairs(pairs)
    if not items:
        raise TrellisError(f"{p}: no pair has a single-turn prompt ({dict(skipped)} skipped); rollouts need "
                           "one user turn per prompt")
    log.info("rlhf prompts: %d single-turn prompts from %d pairs of %s (skipped: %s)", len(items), len(pairs),
             p, dict(skipped))
    return items


def load_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """A .json list or a .jsonl(.gz) file of {"prompt": str, ...} or of comparison pairs; errors name the
    file and line."""
    p = Path(path)
    if not p.exists():
        raise TrellisError(f"{p}: prompts file not found (rlhf.prompts is 'world', '{REWARD_HELDOUT}' or a "
                           "json/jsonl path)")
    items: list[Any]
    if p.name.endswith((".jsonl", ".jsonl.gz")):
        records = parse_json_lines(p, read_text(p, "prompts file"))
        if records and _is_pair_record(records[0][1]) and not isinstance(records[0][1].get("prompt"), str):
            return _pair_file_prompts(p, records)
        items = [value for _, value in records]
    else:
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise TrellisError(f"{p}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        items = data.get("prompts", data) if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TrellisError(f"{p}: expected a list of {{\"prompt\": ...}} objects")
    out = []
    for i, item in enumerate(items, 1):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"].strip():
            raise TrellisError(f"{p}: item {i}: expected an object with a non-empty string \"prompt\"")
        out.append(item)
    if not out:
        raise TrellisError(f"{p}: no prompts")
    return out


def reward_heldout_prompts(reward_model: str | Path) -> list[dict[str, Any]]:
    """Single-turn prompts of the pairs the reward stage held out, none of them a user turn of its training
    pairs. The split is the reward stage's own (trellis.reward.data.load_reward_pairs) on its config.yaml."""
    from trellis.config import load_config
    from trellis.reward.data import load_reward_pairs

    config_path = Path(reward_model).parent / "config.yaml"
    where = f"rlhf.prompts: {REWARD_HELDOUT}"
    if not config_path.exists():
        raise TrellisError(f"{where} reads the reward stage's data split from {config_path}, which does not "
                           f"exist (is {reward_model} a reward stage's final/ directory?)")
    reward = load_config(config_path, stage="reward").reward
    if reward.data == "world":
        raise TrellisError(f"{where}: the reward model of {config_path} was trained on the world's pairs; use "
                           "rlhf.prompts: world (held out from SFT and reward training)")
    try:
        train, heldout, _ = load_reward_pairs(reward.data, None, reward.heldout_fraction, reward.seed)
    except TrellisError as exc:
        raise TrellisError(f"{where} (reward config {config_path}): {exc}") from None
    trained = {text for pair in train for text in user_turns(pair["prompt"])}
    items, skipped = prompts_of_pairs(heldout, exclude=trained)
    if not items:
        raise TrellisError(f"{where}: none of the {len(heldout)} held-out pairs of {config_path} has a "
                           f"single-turn prompt unseen in reward training (skipped: {dict(skipped)}); "
                           "is reward.heldout_fraction 0?")
    log.info("rlhf prompts: %d single-turn prompts from the reward stage's %d held-out pairs (skipped: %s)",
             len(items), len(heldout), dict(skipped))
    return items


def load_prompts(source: str, world_obj: Any | None, reward_model: str | Path | None = None
                 ) -> list[dict[str, Any]]:
    if source == REWARD_HELDOUT:
        if reward_model is None:
            raise TrellisError(f"rlhf.prompts: {REWARD_HELDOUT} needs rlhf.reward_model")
        return reward_heldout_prompts(reward_model)
    if source == "world":
        if world_obj is None:
            raise TrellisError("rlhf.prompts: 'world' needs the synthetic world")
        items = list(world_obj.rlhf_prompts())
        if not items:
            raise TrellisError("rlhf.prompts: the world has no RLHF prompts (world.heldout_fraction is 0?)")
        return items
    return load_prompt_file(source)


class PromptOrder:
    """Epochs of seeded shuffles over n prompts; `position` (prompts consumed so far) is the whole state."""

    def __init__(self, n: int, seed: int, position: int = 0):
        if n <= 0:
            raise ValueError("no prompts")
        self.n, self.seed, self.position = n, seed, position
        self._epoch, self._order = -1, []

    def _order_of(self, epoch: int) -> list[int]:
        import torch

        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.n, generator=gen).tolist()
            self._epoch = epoch
        return self._order

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            epoch, offset = divmod(self.position, self.n)
            out.append(self._order_of(epoch)[offset])
            self.position += 1
        return out
