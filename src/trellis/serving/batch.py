"""The running batch: rows that have their prompt's keys/values and decode one token per step together.

Rows share one left-padded cache (a slab, see `kv`), a `[B, width]` mask (`kv.PadMask`) and each row's next
position id. Prefilled rows join between steps (`join`), finished or cancelled rows leave (`_keep`), and
columns that became padding for every remaining row are trimmed away.

A decode step is one forward and, per row, some list appends: everything that only changes when rows join
or leave (the mask, the sampling settings as tensors, the penalty state) is built then, not per step, and
the chosen tokens (with any logprobs) come to the host in one transfer. On a GPU, where a small model's
forward takes milliseconds, this host work would otherwise set the pace.
"""

from __future__ import annotations

from typing import Any

from trellis.serving.kv import PadMask, RowKV, join_rows, new_cache, trim_left
from trellis.serving.request import Row, decode_step, find_stop
from trellis.serving.sampling import BatchSampling, apply_penalties


class RunningBatch:
    def __init__(self, engine: Any) -> None:
        self.e = engine
        self.rows: list[Row] = []
        self.cache: Any = None
        self.mask: PadMask | None = None
        self.pos: Any = None  # [B] position id of the token each row feeds next
        self.last: Any = None  # [B] the token each row feeds next
        self.counts: Any = None  # [B, V] output token counts, only while some row uses penalties
        self.prompt_mask: Any = None  # [B, V] bool, only with penalties
        self.sampling: BatchSampling | None = None  # of all rows; rebuilt after rows join or leave
        self.trimmable = True  # false for caches whose layers must keep every column (sliding windows)
        # set by `Engine.generate` once no row will join any more: such a batch may move onto a decode graph
        self.closed = False
        self.static: Any = None  # the `graph_decode.DecodeGraph` a frozen batch decodes on

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
        self._accept(logits, len(self.rows) - len(new), len(self.rows))

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
        for i, r in enumerate(new):
            ids[i, width - lengths[i] :] = torch.tensor(r.prompt_ids)
        self.mask = PadMask([width - n for n in lengths], width, dev)
        mask = self.mask.tensor
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        self.cache = new_cache(e.model)
        self.trimmable = False
        logits = self._forward(ids.to(dev), mask, pos, prefill=True)
        self._append(new, torch.tensor(lengths, dtype=torch.long, device=dev))
        self._accept(logits, 0, len(new))

    def _append(self, new: list[Row], next_pos: Any) -> None:
        import torch

        dev = self.e.device
        self.sampling = None
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
        if self.static is not None:  # a frozen batch keeps every slot; the row stops being recorded
            row.finish_reason = row.finish_reason or "abort"
            return
        self._keep([i for i, r in enumerate(self.rows) if r is not row])

    def _keep(self, keep: list[int]) -> None:
        import torch

        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.sampling = None
        if not keep:
            self.cache = self.mask = self.pos = self.last = self.counts = self.prompt_mask = None
            return
        assert self.mask is not None
        idx = torch.tensor(keep, dtype=torch.long, device=self.e.device)
        self.cache.batch_select_indices(idx)
        self.mask.select(keep, idx)
        self.pos, self.last = self.pos[idx], self.last[idx]
        if self.counts is not None:
            self.counts, self.prompt_mask = self.counts[idx], self.prompt_mask[idx]
        if not self.trimmable:
            return
        # columns that are padding for every remaining row cost attention for nothing
        lead = self.mask.trim()
        if lead > 0:
            trim_left(self.cache, lead)

    # -- decoding --
    def step(self) -> list[Row]:
        """Finish rows that are done, feed every other row its last token and choose the next one.

        Returns the rows that finished (already removed from the batch).
        """
        if self.static is not None:
            return self._static_step()
        finished = self.retire()
        if not self.rows:
            return finished
        if self.closed and self.e.graph_decoder is not None and self._freeze():
            return finished + self._static_step()
        assert self.mask is not None
        self.mask.grow(1)
        mask = self._decode_mask()
        logits = self._forward(self.last[:, None], mask, self.pos[:, None], prefill=False)
        self.pos += 1
        self._accept(logits, 0, len(self.rows))
        finished += self.retire()
        return finished

    # -- a closed batch on a decode graph's static buffers (graph_decode) --
    def _freeze(self) -> bool:
        """Move the batch onto static buffers wide enough for every token still to come; False (and nothing
        changed) when it does not qualify: penalties, a cache that is not the slab, too few steps left."""
        from trellis.serving.graph_decode import MIN_STEPS

        decoder = self.e.graph_decoder
        if self.counts is not None or not self.trimmable or not decoder.usable():
            return False
        steps = max(r.max_out - len(r.out_ids) for r in self.rows)
        if steps < MIN_STEPS:
            return False
        assert self.mask is not None
        mask = self.mask.tensor
        graph = decoder.graph_for(len(self.rows), mask.shape[1] + steps)
        graph.load([(layer.keys, layer.values) for layer in self.cache.layers], mask, self.last, self.pos)
        self.sampling = self._sampling_of(0, len(self.rows))  # each row's draws from where it stands
        if self.sampling.draw_table is not None:
            # a row that finishes before the others keeps drawing in its slot (its tokens are dropped): room
            # for those draws past the end of its table
            import torch.nn.functional as F

            self.sampling.draw_table = F.pad(self.sampling.draw_table, (0, steps))
        self.static = graph
        self.cache = self.mask = self.pos = None
        return True

    def _static_step(self) -> list[Row]:
        """One replayed step for every slot; rows that finished earlier keep their slot, their tokens dropped."""
        live = [r.finish_reason is None for r in self.rows]
        logits = self.static.step()
        self._accept(logits, 0, len(self.rows))
        self.static.feed(self.last)
        finished = [r for r, was in zip(self.rows, live, strict=True) if was and r.finish_reason is not None]
        if all(r.finish_reason is not None for r in self.rows):
            self.static = None
            self._keep([])
        return finished

    def _decode_mask(self) -> Any:
        """The attention mask of a decode step: None when no row is padded (always so for one row), so the
        model needs none; else the 2D mask, or the 4D one transformers would build from it (see engine)."""
        assert self.mask is not None
        if not self.mask.padded:
            return None
        if self.e.prebuilt_decode_mask and self.trimmable:
            return self.mask.tensor[:, None, None, :]
        return self.mask.tensor

    def retire(self) -> list[Row]:
        gone = [r for r in self.rows if r.finish_reason is not None]
        if gone:
            self._keep([i for i, r in enumerate(self.rows) if r.finish_reason is None])
        return gone

    def _forward(self, ids: Any, mask: Any, pos: Any, prefill: bool) -> Any:
        lean = self.e.lean_decode
        if not prefill and lean is not None and not lean.hooked():
            return lean(ids, mask, pos, self.cache)
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

    def _sampling_of(self, start: int, stop: int) -> BatchSampling:
        rows = self.rows[start:stop]
        s = BatchSampling.of([r.params for r in rows], [r.generator for r in rows], self.e.device)
        if not s.all_greedy:
            s.attach_draws([r.uniform_table() for r in rows], [len(r.out_ids) for r in rows], self.e.device)
        return s

    def _accept(self, logits: Any, start: int, stop: int) -> None:
        """Choose the next token for rows `start:stop` (whose logits are `logits`, in order), then record it."""
        import torch

        whole = start == 0 and stop == len(self.rows)
        if whole:
            if self.sampling is None:
                self.sampling = self._sampling_of(start, stop)
            s = self.sampling
        else:  # rows joining a running batch: their first token
            s = self._sampling_of(start, stop)
        vocab = self.e.vocab_size
        raw = logits[:, :vocab] if logits.shape[-1] > vocab else logits
        logits = raw
        if s.repetition is not None:  # some of these rows use penalties (so the counts exist)
            logits = apply_penalties(
                raw,
                self.counts[start:stop],
                self.prompt_mask[start:stop],
                s.repetition,
                s.presence,
                s.frequency,
            )
        tokens = s.choose(logits)
        if whole:
            self.last = tokens
        else:
            self.last[start:stop] = tokens
        if self.counts is not None:
            self.counts[torch.arange(start, stop, device=tokens.device), tokens] += 1
        self._record(self.rows[start:stop], *_to_host(tokens, raw, s))

    def _record(
        self,
        rows: list[Row],
        tokens: list[int],
        logprobs: list[float] | None,
        tops: list[dict[int, float] | None] | None,
    ) -> None:
        """Append each row's token (and logprobs), advance its text if anyone reads it, and check its stops."""
        e = self.e
        for j, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
            if row.finish_reason is not None:  # a finished row's slot in a frozen batch
                continue
            e.stats["generated_tokens"] += 1
            row.out_ids.append(tok)
            streaming = row.handle is not None
            if streaming:
                row.pending_ids.append(tok)
            if row.params.logprobs is not None and logprobs is not None:
                row.logprobs.append(logprobs[j])
                if streaming:
                    row.pending_lp.append(logprobs[j])
                entry = tops[j] if tops is not None else None
                if entry is not None:
                    row.top_logprobs.append(entry)
                    if streaming:
                        row.pending_top.append(entry)
            # the text: streamed, or searched for stop strings; `generate` without stop strings needs none
            if streaming or row.params.stop:
                decode_step(e.tokenizer, row)
            if tok in row.stop_ids:
                row.finish_reason = "stop"
                row.stop_reason = tok if tok in row.params.stop_token_ids else None
            elif row.params.stop and find_stop(row):
                row.finish_reason = "stop"
            elif len(row.out_ids) >= row.max_out:
                row.finish_reason = "length"


def _to_host(
    tokens: Any, raw_logits: Any, s: BatchSampling
) -> tuple[list[int], list[float] | None, list[dict[int, float] | None] | None]:
    """The chosen tokens and, when rows ask for logprobs, each token's raw log-probability and each row's
    `logprobs` most likely alternatives (None for rows that want none), copied to the host in one transfer:
    every `.tolist()` of a GPU tensor waits for the GPU."""
    import torch

    if not s.want_logprobs:
        return tokens.tolist(), None, None
    raw_lp = raw_logits.log_softmax(dim=-1)
    k = s.max_top_logprobs
    cols = [tokens[:, None].double(), raw_lp.gather(-1, tokens[:, None]).double()]
    if k > 0:  # one topk for the largest k: each row's own k most likely are its first k
        top = raw_lp.topk(k, dim=-1)
        cols += [top.values.double(), top.indices.double()]
    table = torch.cat(cols, dim=1).tolist()
    ids = [int(r[0]) for r in table]
    lps = [r[1] for r in table]
    if k == 0:
        return ids, lps, None
    tops: list[dict[int, float] | None] = []
    for r, p in zip(table, s.params, strict=True):
        n = p.logprobs or 0
        tops.append(
            {int(i): v for i, v in zip(r[2 + k : 2 + k + n], r[2 : 2 + n], strict=True)} if n else None
        )
    return ids, lps, tops
