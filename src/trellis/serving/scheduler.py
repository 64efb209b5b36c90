"""What the engine does each step: admit requests, prefill some prompt tokens, decode the running batch.

Prefill is chunked: one step computes at most `max_prefill_tokens` prompt tokens (whole short prompts
packed together, or a slice of a long one), then the running rows decode one token, so a long prompt
arriving never stalls the streams already running for the whole of its prefill.

Prefix sharing: a prompt that shares a prefix with a recent one (the prefix cache) or with one being
prefilled right now starts from those keys/values and computes only the rest. Requests that arrive
together with one system prompt would otherwise all compute it in the same forward: a prompt whose shared
prefix another row computes in this step waits a step and then reuses it.
"""

from __future__ import annotations

from typing import Any

from trellis.serving.batch import RunningBatch
from trellis.serving.kv import RowKV, prefix_of
from trellis.serving.prefill import Segment, forward_segments
from trellis.serving.prefix_cache import MIN_REUSE, PrefixCache, common_prefix
from trellis.serving.request import Row


def reserved_tokens(row: Row, max_context: int | None) -> int:
    """The most key/value positions `row` can occupy: its prompt and every token it may generate."""
    n = len(row.prompt_ids) + row.params.max_tokens
    return min(n, max_context) if max_context else n


class Scheduler:
    def __init__(self, engine: Any, prefix_cache: PrefixCache | None) -> None:
        self.e = engine
        self.prefix_cache = prefix_cache
        self.batch = RunningBatch(engine)
        self.prefilling: list[Row] = []  # admitted, prompt not fully computed yet (FCFS)

    @property
    def idle(self) -> bool:
        return not self.batch.rows and not self.prefilling

    @property
    def rows(self) -> list[Row]:
        return self.prefilling + self.batch.rows

    def has_room(self, row: Row) -> bool:
        """Whether `row` may join now: under the batch-size cap and, with `max_tokens_in_flight`, its
        reservation (prompt + max_tokens) fits beside those admitted. A row alone is always admitted, so
        one request larger than the cap still runs (by itself) instead of waiting forever."""
        if self.idle:
            return True
        cap = self.e.max_tokens_in_flight
        if cap is not None and self.tokens_reserved() + reserved_tokens(row, self.e.max_context) > cap:
            return False
        if not self.e.stackable:  # rows cannot join a running batch: a new group waits for an empty one
            return not self.batch.rows and len(self.prefilling) < self.e.max_batch_size
        return len(self.batch.rows) + len(self.prefilling) < self.e.max_batch_size

    def tokens_reserved(self) -> int:
        """Key/value positions the admitted rows hold or may still grow to (prompt + max_tokens each)."""
        return sum(reserved_tokens(r, self.e.max_context) for r in self.rows)

    def admit(self, row: Row) -> None:
        self.prefilling.append(row)

    def _reuse(self, row: Row) -> None:
        """Start a row that has computed nothing itself from the longest prefix anyone has computed."""
        cache = self.prefix_cache
        assert cache is not None
        best, kv = cache.lookup(row.prompt_ids)
        limit = len(row.prompt_ids) - 1
        for other in self.prefilling:
            if other is row or other.kv is None or other.prefilled <= best:
                continue
            n = common_prefix(other.prompt_ids, row.prompt_ids, min(limit, other.prefilled))
            if n > best and n >= MIN_REUSE:
                best, kv = n, prefix_of(other.kv, n)
        if best > row.prefilled:
            cache.hits += row.reused == 0
            cache.reused_tokens += best - row.reused
            row.prefilled, row.kv, row.reused = best, kv, best

    def _shares_work(self, row: Row, chunk: list[tuple[Row, Segment]]) -> bool:
        """Whether a row planned in this step computes at least MIN_REUSE more of `row`'s prompt."""
        limit = len(row.prompt_ids) - 1
        for other, seg in chunk:
            end = min(limit, seg.start + len(seg.tokens))
            if common_prefix(other.prompt_ids, row.prompt_ids, end) - row.prefilled >= MIN_REUSE:
                return True
        return False

    def drop(self, row: Row) -> None:
        if row in self.prefilling:
            self.prefilling.remove(row)
            row.kv = None
        else:
            self.batch.drop(row)

    def prefill(self) -> list[Row]:
        """Compute up to the budget of waiting prompt tokens; rows whose prompt is done join the batch."""
        if not self.prefilling:
            return []
        if not self.e.stackable:
            new, self.prefilling = self.prefilling, []
            self.batch.start_padded(new)
            return new
        budget = self.e.max_prefill_tokens
        chunk: list[tuple[Row, Segment]] = []
        for row in self.prefilling:
            if budget <= 0:
                break
            if self.prefix_cache is not None and row.prefilled == row.reused:
                self._reuse(row)
                if chunk and self._shares_work(row, chunk):
                    continue
            n = min(len(row.prompt_ids) - row.prefilled, budget)
            tokens = row.prompt_ids[row.prefilled : row.prefilled + n]
            chunk.append((row, Segment(tokens, row.kv, row.prefilled)))
            budget -= n
        groups = [chunk] if self.e.packing else [[item] for item in chunk]
        done: list[tuple[Row, RowKV, Any]] = []
        for group in groups:
            logits, kvs = forward_segments(
                self.e.model, [s for _, s in group], self.e.device, self.e._takes_logits_to_keep
            )
            self.e.stats["prefill_forwards"] += 1
            for j, ((row, seg), kv) in enumerate(zip(group, kvs, strict=True)):
                row.kv = kv
                row.prefilled += len(seg.tokens)
                self.e.stats["prefill_tokens"] += len(seg.tokens)
                if row.prefilled == len(row.prompt_ids):
                    done.append((row, kv, logits[j : j + 1]))
        if not done:
            return []
        import torch

        rows = [r for r, _, _ in done]
        for row, kv, _ in done:
            if self.prefix_cache is not None:
                self.prefix_cache.insert(row.prompt_ids, kv)
            row.kv = None
        self.prefilling = [r for r in self.prefilling if r not in rows]
        self.batch.join(rows, [kv for _, kv, _ in done], torch.cat([lg for _, _, lg in done]))
        return rows
