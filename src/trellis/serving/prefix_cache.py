"""Prefix sharing: the keys/values of recent prompts, so a prompt that starts the same way (one system
prompt, one few-shot preamble, n samples of one prompt) skips recomputing the part it shares.

Entries are whole prompts' caches, least recently used first out once over a byte budget. A lookup finds
the entry sharing the longest prefix with the new prompt. Entries are only valid for the weights that made
them: `check_weights` empties the cache when any parameter was changed in place (an optimizer step, a
state-dict load) or replaced, which is what a policy being trained between rollouts does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from trellis.serving.kv import RowKV, nbytes, prefix_of

# below this many shared tokens a reuse saves less than it costs to cut and concatenate caches
MIN_REUSE = 8


class PrefixCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], tuple[RowKV, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0  # requests that reused a prefix (counted by the scheduler, which applies them)
        self.reused_tokens = 0
        self._weights: tuple[int, int] | None = None

    def check_weights(self, model: Any) -> None:
        """Forget every entry if the model's parameters changed since the last call."""
        params = list(model.parameters())
        stamp = (sum(p._version for p in params), hash(tuple(p.data_ptr() for p in params)))
        if stamp != self._weights:
            self.clear()
            self._weights = stamp

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def lookup(self, prompt: list[int]) -> tuple[int, RowKV | None]:
        """The longest cached prefix of `prompt`, leaving at least its last token to compute (its logits
        give the first generated token): (length, keys/values) or (0, None)."""
        best, best_key = 0, None
        limit = len(prompt) - 1
        for key in self.entries:
            n = common_prefix(key, prompt, limit)
            if n > best:
                best, best_key = n, key
        if best < MIN_REUSE or best_key is None:
            return 0, None
        self.entries.move_to_end(best_key)
        return best, prefix_of(self.entries[best_key][0], best)

    def insert(self, prompt: list[int], kv: RowKV) -> None:
        if self.max_bytes <= 0:
            return
        key = tuple(prompt)
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        size = nbytes(kv)
        if size > self.max_bytes:
            return
        self.entries[key] = (kv, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, gone) = self.entries.popitem(last=False)
            self.bytes -= gone


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common prefix of `a` and `b`, at most `limit`."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
