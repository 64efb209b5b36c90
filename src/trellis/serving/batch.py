"""The running batch: rows that have their prompt's keys/values and decode one token per step together.

Rows share one left-padded cache (a slab, see `kv`), a `[B, width]` mask and each row's next position
id. Prefilled rows join between steps (`join`), finished or cancelled rows leave (`_keep`), and columns
that became padding for every remaining row are trimmed away.
"""

from __future__ import annotations

from typing import Any

from trellis.serving.kv import RowKV, join_rows, new_cache, trim_left
from trellis.serving.request import Row, decode_step, find_stop
from trellis.serving.sampling import apply_penalties, choose_tokens


class RunningBatch:
    def __init__(self, engine: Any) -> None:
        self.e = engine
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None  # [B, L] long, 1 where the cache column is a real token of that row
        self.pos: Any = None  # [B] position id of the token each row feeds next
        self.last: Any = None  # [B] the token each row feeds next
        self.counts: Any = None  # [B, V] output token counts, only while some row uses penalties
        self.prompt_mask: Any = None  # [B, V] bool, only with penalties
        self.trimmable = True  # false for caches whose layers must keep every column (sliding windows)

    # -- membership --
    def join(self, new: list[Row], kvs: list[RowKV], logits: Any) -> None:
        """Stack prefilled rows onto the batch; `logits` (their last prompt tokens') give their first tokens.

        Rows that finish at once stay until the next `step` retires them.
        """
        import torch

        dev = self.e.device
        self.cache, self.mask = join_rows(self.cache, self.mask, kvs)
        next_pos = torch.tensor([len(r.prompt_ids) for r in new], dtype=torch.long, device=dev)
        self._append(new, next_pos)
        self._accept(logits, range(len(self.rows) - len(new), len(self.rows)))

    def start_padded(self, new: list[Row]) -> None:
        """Prefill `new` as one left-padded group into an empty batch: the path for caches whose rows
        cannot be cut out and stacked (sliding-window layers, say)."""
        import torch

        assert not self.rows
        e = self.e
        dev = e.device
        lengths = [len(r.prompt_ids) for r in new]
        width = max(lengths)
        ids = torch.full((len(new), width), e.pad_id, dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, width - lengths[i] :] = torch.tensor(r.prompt_ids)
            mask[i, width - lengths[i] :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        self.cache = new_cache(e.model)
        self.trimmable = False
        logits = self._forward(ids, mask, pos, prefill=True)
        self.mask = mask
        self._append(new, torch.tensor(lengths, dtype=torch.long, device=dev))
        self._accept(logits, range(len(new)))

    def _append(self, new: list[Row], next_pos: Any) -> None:
        import torch

        dev = self.e.device
        counts = prompt_mask = None
        if self.counts is not None or any(r.params.uses_penalties for r in new):
            if self.counts is None and self.rows:
                self.counts, self.prompt_mask = self._penalty_state(self.rows)
            counts, prompt_mask = self._penalty_state(new)
        if not self.rows:
            self.rows, self.pos = list(new), next_pos
            self.last = torch.zeros(len(new), dtype=torch.long, device=dev)
            self.counts, self.prompt_mask = counts, prompt_mask
            return
        self.pos = torch.cat([self.pos, next_pos])
        self.last = torch.cat([self.last, torch.zeros(len(new), dtype=torch.long, device=dev)])
        if counts is not None:
            self.counts = torch.cat([self.counts, counts])
            self.prompt_mask = torch.cat([self.prompt_mask, prompt_mask])
        self.rows += new

    def _penalty_state(self, rows: list[Row]) -> tuple[Any, Any]:
        import torch

        e = self.e
        counts = torch.zeros((len(rows), e.vocab_size), dtype=torch.int32, device=e.device)
        prompt_mask = torch.zeros((len(rows), e.vocab_size), dtype=torch.bool, device=e.device)
        for i, r in enumerate(rows):
            seen = torch.tensor([t for t in r.prompt_ids if t < e.vocab_size], dtype=torch.long)
            prompt_mask[i, seen.to(e.device)] = True
            for t in r.out_ids:
                if t < e.vocab_size:
                    counts[i, t] += 1
        return counts, prompt_mask

    def drop(self, row: Row) -> None:
        self._keep([i for i, r in enumerate(self.rows) if r is not row])

    def _keep(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.pos = self.last = self.counts = self.prompt_mask = None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.e.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.pos, self.last = self.mask[idx], self.pos[idx], self.last[idx]
        if self.counts is not None:
            self.counts, self.prompt_mask = self.counts[idx], self.prompt_mask[idx]
        if not self.trimmable:
            return
        # columns that are padding for every remaining row cost attention for nothing
        lead = int((self.mask.cumsum(-1) == 0).sum(-1).min().item())
        if lead > 0:
            trim_left(self.cache, lead)
            self.mask = self.mask[:, lead:]

    # -- decoding --
    def step(self) -> list[Row]:
        """Finish rows that are done, feed every other row its last token and choose the next one.

        Returns the rows that finished (already removed from the batch).
        """
        import torch

        finished = self.retire()
        if not self.rows:
            return finished
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        logits = self._forward(self.last[:, None], mask, self.pos[:, None], prefill=False)
        self.mask = mask
        self.pos = self.pos + 1
        self._accept(logits, range(len(self.rows)))
        finished += self.retire()
        return finished

    def retire(self) -> list[Row]:
        gone = [r for r in self.rows if r.finish_reason is not None]
        if gone:
            self._keep([i for i, r in enumerate(self.rows) if r.finish_reason is None])
        return gone

    def _forward(self, ids: Any, mask: Any, pos: Any, prefill: bool) -> Any:
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "past_key_values": self.cache,
            "use_cache": True,
        }
        if prefill and self.e._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.e.model(**kwargs)
        return out.logits[:, -1, :].float()

    def _accept(self, logits: Any, idx: range) -> None:
        """Choose the next token for rows `idx` (whose logits are `logits`, in order) and check their stops."""
        import torch

        e = self.e
        rows = [self.rows[i] for i in idx]
        logits = logits[:, : e.vocab_size] if logits.shape[-1] > e.vocab_size else logits
        want_lp = any(r.params.logprobs is not None for r in rows)
        raw_lp = logits.log_softmax(dim=-1) if want_lp else None
        if self.counts is not None:
            sl = slice(idx.start, idx.stop)
            dev = logits.device
            logits = apply_penalties(
                logits,
                self.counts[sl],
                self.prompt_mask[sl],
                torch.tensor([r.params.repetition_penalty for r in rows], device=dev),
                torch.tensor([r.params.presence_penalty for r in rows], device=dev),
                torch.tensor([r.params.frequency_penalty for r in rows], device=dev),
            )
        tokens = choose_tokens(logits, [r.params for r in rows], [r.generator for r in rows])
        self.last[idx.start : idx.stop] = tokens
        if self.counts is not None:
            self.counts[torch.arange(idx.start, idx.stop, device=tokens.device), tokens] += 1
        chosen_lp = raw_lp.gather(-1, tokens[:, None]).squeeze(-1).tolist() if raw_lp is not None else None
        tok_list = tokens.tolist()
        for j, (row, tok) in enumerate(zip(rows, tok_list, strict=True)):
            row.out_ids.append(tok)
            row.pending_ids.append(tok)
            e.stats["generated_tokens"] += 1
            if row.params.logprobs is not None and raw_lp is not None and chosen_lp is not None:
                row.logprobs.append(chosen_lp[j])
                row.pending_lp.append(chosen_lp[j])
                if row.params.logprobs > 0:
                    top = raw_lp[j].topk(row.params.logprobs)
                    entry = dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))
                    row.top_logprobs.append(entry)
                    row.pending_top.append(entry)
            if row.needs_text:
                decode_step(e.tokenizer, row)
            if tok in row.stop_ids:
                row.finish_reason = "stop"
                row.stop_reason = tok if tok in row.params.stop_token_ids else None
            elif row.params.stop and find_stop(row):
                row.finish_reason = "stop"
            elif len(row.out_ids) >= row.params.max_tokens or (
                e.max_context is not None and len(row.prompt_ids) + len(row.out_ids) >= e.max_context
            ):
                row.finish_reason = "length"
