"""RLHF prompts: where they come from, and a seeded, resumable order over them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def load_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    """A .json list or a .jsonl file of {"prompt": str, ...}; errors name the file and line."""
    p = Path(path)
    if not p.exists():
        raise TrellisError(f"{p}: prompts file not found (rlhf.prompts is 'world' or a json/jsonl path)")
    items: list[Any]
    if p.suffix == ".jsonl":
        items = []
        for lineno, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TrellisError(f"{p}:{lineno}: invalid JSON ({exc.msg})") from None
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


def load_prompts(source: str, world_obj: Any | None) -> list[dict[str, Any]]:
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
