"""The generation engine: batched decoding with a KV cache over any transformers causal LM.

One engine serves PPO rollouts, evaluation and the HTTP server. It works on the model object it is given
(no weight copy), so a policy being trained generates with its current weights.

Design: a `_Batch` holds the running rows, one shared left-padded `DynamicCache`, the 2D attention mask
and each row's next position id. Rows leave the batch as soon as they finish (their cache rows are
dropped and leading all-padding columns trimmed), and new rows join between decode steps: they are
prefilled on their own and their cache is left-padded and concatenated onto the running one
(continuous batching). `generate` runs this loop in the caller's thread; `submit` hands requests to a
background thread that runs the same loop and streams deltas to `RequestHandle`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis.serving.sampling import SamplingParams, apply_penalties, choose_tokens

_ids = itertools.count()


@dataclass
class Completion:
    prompt_token_ids: list[int]
    token_ids: list[int]  # includes the eos / stop token that ended the row, if any
    text: str  # decoded without special tokens; cut before a matched stop string
    finish_reason: str  # "stop" | "length" ("abort" only for a cancelled streaming request)
    logprobs: list[float] | None = None  # raw model log-probability of each generated token
    top_logprobs: list[dict[int, float]] | None = None  # per position, the `logprobs` most likely tokens
    stop_reason: int | str | None = None  # the stop token id or stop string that matched, None for eos/length


@dataclass
class StreamDelta:
    """What one decode step added to a streaming request; the last one carries `completion`."""

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    finish_reason: str | None = None
    completion: Completion | None = None


class RequestHandle:
    """A submitted request: iterate (sync or async) over its `StreamDelta`s, or wait for `result()`."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request_id = request_id
        self._loop = loop
        self._sync_q: queue.Queue[StreamDelta] = queue.Queue()
        self._async_q: asyncio.Queue[StreamDelta] | None = asyncio.Queue() if loop is not None else None
        self._done = threading.Event()
        self.completion: Completion | None = None
        self.error: BaseException | None = None  # set when the engine loop failed on this request
        self.cancelled = False
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        """Stop generating for this request; the engine drops it before its next step."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _push(self, delta: StreamDelta) -> None:
        if delta.completion is not None:
            self.completion = delta.completion
        if self._async_q is not None and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._async_q.put_nowait, delta)
            except RuntimeError:  # the consumer's event loop is gone: nobody is listening
                self.cancelled = True
        else:
            self._sync_q.put(delta)
        if delta.completion is not None:
            self._done.set()

    def __iter__(self) -> Iterator[StreamDelta]:
        if self._async_q is not None:
            raise RuntimeError("this request was submitted from an event loop: use `async for`")
        while True:
            delta = self._sync_q.get()
            yield delta
            if delta.completion is not None:
                return

    async def __aiter__(self) -> AsyncIterator[StreamDelta]:
        if self._async_q is None:
            raise RuntimeError("this request was submitted outside an event loop: use `for`")
        while True:
            delta = await self._async_q.get()
            yield delta
            if delta.completion is not None:
                return

    def result(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.request_id} did not finish in {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"generation failed: {self.error}") from self.error
        assert self.completion is not None
        return self.completion

    async def aresult(self) -> Completion:
        async for _ in self:
            pass
        if self.error is not None:
            raise RuntimeError(f"generation failed: {self.error}") from self.error
        assert self.completion is not None
        return self.completion


@dataclass
class _Row:
    prompt_ids: list[int]
    params: SamplingParams
    generator: Any  # torch.Generator
    stop_ids: frozenset[int]
    handle: RequestHandle | None = None
    index: int = 0  # position in the caller's prompt list (generate)
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    text: str = ""  # incrementally decoded output text
    emitted: int = 0  # characters of `text` already streamed
    prefix_offset: int = 0
    read_offset: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    stop_at: int | None = None  # where a stop string starts in `text`
    pending_ids: list[int] = field(default_factory=list)  # generated, not yet streamed
    pending_lp: list[float] = field(default_factory=list)
    pending_top: list[dict[int, float]] = field(default_factory=list)

    @property
    def needs_text(self) -> bool:
        return self.handle is not None or bool(self.params.stop)


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 16,
        device: Any = None,
        add_special_tokens: bool = False,
    ) -> None:
        import torch

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1 (got {max_batch_size})")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.add_special_tokens = add_special_tokens
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.max_context = _max_context(model)
        self.vocab_size = _vocab_size(model)
        self._takes_logits_to_keep = _accepts(model, "logits_to_keep")
        # background loop state (submit/stream path)
        self._waiting: deque[_Row] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.num_running = 0
        self.last_error: BaseException | None = None
        self.stats = {"requests_finished": 0, "generated_tokens": 0, "prompt_tokens": 0}

    # ---- prompts -------------------------------------------------------------------------------------
    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"])
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("prompt: empty token list")
        return ids

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` under the tokenizer's chat template, ending with the assistant prompt."""
        out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "keys"):
            out = out["input_ids"]
        return [int(t) for t in out]

    def _make_row(self, prompt_ids: list[int], params: SamplingParams, index: int = 0) -> _Row:
        import torch

        if not prompt_ids:
            raise ValueError("prompt: encodes to no tokens")
        params.validate()
        seed = params.seed
        if seed is None:  # from torch's global RNG, so torch.manual_seed makes a whole run reproducible
            seed = int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator().manual_seed(seed)
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids |= self.eos_token_ids
        return _Row(list(prompt_ids), params, gen, frozenset(stop_ids), index=index)

    # ---- offline batch generation --------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[Completion]:
        """Complete every prompt; the result list is in prompt order."""
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            plist = [params] * len(prompts)
        else:
            plist = list(params)
            if len(plist) != len(prompts):
                raise ValueError(f"params: got {len(plist)} SamplingParams for {len(prompts)} prompts")
        rows = deque(
            self._make_row(self.encode(p), sp, i)
            for i, (p, sp) in enumerate(zip(prompts, plist, strict=True))
        )
        results: list[Completion | None] = [None] * len(rows)
        bar = _progress(len(rows)) if use_tqdm else None
        with _inference(self.model):
            batch = _Batch(self)
            while rows or batch.rows:
                free = self.max_batch_size - len(batch.rows)
                if free > 0 and rows and (batch.mergeable or not batch.rows):
                    batch.add([rows.popleft() for _ in range(min(free, len(rows)))])
                for row in batch.step():
                    results[row.index] = _completion(self, row)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [r for r in results if r is not None]

    # ---- streaming / server path ---------------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
    ) -> RequestHandle:
        """Queue one request for the background loop. Called inside an event loop, the handle is async."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        row = self._make_row(self.encode(prompt), params or SamplingParams())
        row.handle = RequestHandle(request_id or f"req-{next(_ids)}", loop)
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is shut down")
            self._waiting.append(row)
            self._cv.notify()
        self.start()
        return row.handle

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        with self._cv:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="trellis-engine", daemon=True)
                self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    self._abort_waiting()
                    return
            with _inference(self.model):
                self._run_busy_period()

    def _run_busy_period(self) -> None:
        batch = _Batch(self)
        new: list[_Row] = []
        try:
            while True:
                with self._cv:
                    if self._stopping:
                        self._abort_waiting()
                        for row in batch.rows:
                            self._finish_stream(row, "abort")
                        batch.rows = []
                        return
                    new = []
                    free = self.max_batch_size - len(batch.rows)
                    if batch.mergeable or not batch.rows:
                        while self._waiting and len(new) < free:
                            row = self._waiting.popleft()
                            if row.handle is not None and row.handle.cancelled:
                                self._finish_stream(row, "abort")
                            else:
                                new.append(row)
                    if not new and not batch.rows:
                        return
                for row in [r for r in batch.rows if r.handle is not None and r.handle.cancelled]:
                    batch.drop(row)
                    self._finish_stream(row, "abort")
                if new:
                    batch.add(new)
                    for row in new:
                        if row.finish_reason is None:
                            self._emit(row)
                self.num_running = len(batch.rows)
                if not batch.rows:
                    continue
                finished = batch.step()
                for row in batch.rows:
                    self._emit(row)
                for row in finished:
                    self._finish_stream(row, row.finish_reason or "stop")
                self.num_running = len(batch.rows)
        except Exception as exc:  # noqa: BLE001 - fail the requests in flight, keep the loop alive
            self._fail(batch.rows + [r for r in new if r not in batch.rows], exc)
        finally:
            self.num_running = 0

    def _emit(self, row: _Row) -> None:
        assert row.handle is not None
        if not row.pending_ids:
            return
        if row.handle.first_token_at is None:
            row.handle.first_token_at = time.monotonic()
        safe = _stream_safe_len(row.text, row.params.stop)
        delta = row.text[row.emitted : safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        row.handle._push(_delta(row, delta))

    def _finish_stream(self, row: _Row, reason: str) -> None:
        if row.handle is None:
            return
        if reason == "abort":
            row.finish_reason = "abort"
        comp = _completion(self, row)
        if row.handle.first_token_at is None:
            row.handle.first_token_at = time.monotonic()
        rest = comp.text[row.emitted :] if comp.text.startswith(row.text[: row.emitted]) else ""
        d = _delta(row, rest)
        d.finish_reason, d.completion = comp.finish_reason, comp
        row.handle._push(d)

    def _abort_waiting(self) -> None:
        while self._waiting:
            self._finish_stream(self._waiting.popleft(), "abort")

    def _fail(self, rows: list[_Row], exc: Exception) -> None:
        for row in rows:
            if row.handle is not None:
                row.handle.error = exc
            self._finish_stream(row, "abort")
        self.last_error = exc


class _Batch:
    """The running rows of one decode loop and their shared, left-padded KV cache."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.rows: list[_Row] = []
        self.cache: Any = None
        self.mask: Any = None  # [B, L] long, 1 where the cache column is a real token of that row
        self.pos: Any = None  # [B] position id of the token each row feeds next
        self.last: Any = None  # [B] the token each row feeds next
        self.counts: Any = None  # [B, V] output token counts, only while some row uses penalties
        self.prompt_mask: Any = None  # [B, V] bool, only with penalties
        self.mergeable = True

    # -- membership --
    def add(self, new: list[_Row]) -> None:
        """Prefill `new` rows and join them to the running batch; rows that finish at once are kept pending."""
        import torch

        e = self.e
        dev = e.device
        lengths = [len(r.prompt_ids) for r in new]
        width = max(lengths)
        ids = torch.full((len(new), width), _pad_id(e.tokenizer), dtype=torch.long)
        mask = torch.zeros((len(new), width), dtype=torch.long)
        for i, r in enumerate(new):
            ids[i, width - lengths[i] :] = torch.tensor(r.prompt_ids)
            mask[i, width - lengths[i] :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)
        cache = _new_cache(e.model)
        logits = self._forward(ids, mask, pos, cache, prefill=True)
        next_pos = torch.tensor(lengths, dtype=torch.long, device=dev)
        if self.rows and not _merge_supported(self.cache, cache):
            raise RuntimeError("cannot merge into a running batch with this cache type")
        self.mergeable = _merge_supported(cache, cache)
        counts = prompt_mask = None
        if self.counts is not None or any(r.params.uses_penalties for r in new):
            counts = torch.zeros((len(new), e.vocab_size), dtype=torch.int32, device=dev)
            prompt_mask = torch.zeros((len(new), e.vocab_size), dtype=torch.bool, device=dev)
            for i, r in enumerate(new):
                prompt_mask[
                    i, torch.tensor([t for t in r.prompt_ids if t < e.vocab_size], dtype=torch.long)
                ] = True
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos = list(new), cache, mask, next_pos
            self.counts, self.prompt_mask = counts, prompt_mask
        else:
            if self.counts is None and counts is not None:
                self._start_penalties()
            if counts is None and self.counts is not None:
                counts, prompt_mask = self._penalty_state(new)
            self.cache, self.mask = _concat_caches(self.cache, self.mask, cache, mask)
            self.pos = torch.cat([self.pos, next_pos])
            self.last = torch.cat([self.last, torch.zeros(len(new), dtype=torch.long, device=dev)])
            if counts is not None:
                self.counts = torch.cat([self.counts, counts])
                self.prompt_mask = torch.cat([self.prompt_mask, prompt_mask])
            self.rows += new
        # the prefill's logits give each new row its first token; rows that finish at once leave in step()
        self._accept(logits, range(len(self.rows) - len(new), len(self.rows)))

    def _penalty_state(self, rows: list[_Row]) -> tuple[Any, Any]:
        import torch

        e = self.e
        counts = torch.zeros((len(rows), e.vocab_size), dtype=torch.int32, device=e.device)
        prompt_mask = torch.zeros((len(rows), e.vocab_size), dtype=torch.bool, device=e.device)
        for i, r in enumerate(rows):
            prompt_mask[i, torch.tensor([t for t in r.prompt_ids if t < e.vocab_size], dtype=torch.long)] = (
                True
            )
            for t in r.out_ids:
                if t < e.vocab_size:
                    counts[i, t] += 1
        return counts, prompt_mask

    def _start_penalties(self) -> None:
        self.counts, self.prompt_mask = self._penalty_state(self.rows)

    def drop(self, row: _Row) -> None:
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
        if self.mergeable:  # columns that are padding for every remaining row cost attention for nothing
            lead = int((self.mask.cumsum(-1) == 0).sum(-1).min().item())
            if lead > 0:
                _trim_left(self.cache, lead)
                self.mask = self.mask[:, lead:]

    # -- decoding --
    def step(self) -> list[_Row]:
        """Finish rows that are done, feed every other row its last token and choose the next one.

        Returns the rows that finished (already removed from the batch).
        """
        import torch

        finished = self._retire()
        if not self.rows:
            return finished
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=-1)
        logits = self._forward(self.last[:, None], mask, self.pos[:, None], self.cache, prefill=False)
        self.mask = mask
        self.pos = self.pos + 1
        self._accept(logits, range(len(self.rows)))
        finished += self._retire()
        return finished

    def _retire(self) -> list[_Row]:
        gone = [r for r in self.rows if r.finish_reason is not None]
        if gone:
            self._keep([i for i, r in enumerate(self.rows) if r.finish_reason is None])
        return gone

    def _forward(self, ids: Any, mask: Any, pos: Any, cache: Any, prefill: bool) -> Any:
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": pos,
            "past_key_values": cache,
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
        if self.last is None or len(self.last) != len(self.rows):
            self.last = torch.zeros(len(self.rows), dtype=torch.long, device=e.device)
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
                _decode_step(e.tokenizer, row)
            if tok in row.stop_ids:
                row.finish_reason = "stop"
                row.stop_reason = tok if tok in row.params.stop_token_ids else None
            elif row.params.stop and _find_stop(row):
                row.finish_reason = "stop"
            elif len(row.out_ids) >= row.params.max_tokens or (
                e.max_context is not None and len(row.prompt_ids) + len(row.out_ids) >= e.max_context
            ):
                row.finish_reason = "length"


# ---- helpers -------------------------------------------------------------------------------------------
def _decode_step(tokenizer: Any, row: _Row) -> None:
    """Incremental detokenization (as in TGI/vLLM): re-decode a short window, append only settled text."""
    ids = row.out_ids
    prefix = tokenizer.decode(ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
    full = tokenizer.decode(ids[row.prefix_offset :], skip_special_tokens=True)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        row.text += full[len(prefix) :]
        row.prefix_offset, row.read_offset = row.read_offset, len(ids)


def _find_stop(row: _Row) -> bool:
    longest = max(len(s) for s in row.params.stop)
    start = max(0, len(row.text) - longest - 16)  # only the newest text can complete a match
    best: tuple[int, str] | None = None
    for s in row.params.stop:
        at = row.text.find(s, start)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, s)
    if best is None:
        return False
    row.stop_at, row.stop_reason = best
    return True


def _stream_safe_len(text: str, stops: list[str]) -> int:
    """How much of `text` can be streamed: hold back a tail that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return len(text) - hold


def _delta(row: _Row, text: str) -> StreamDelta:
    d = StreamDelta(
        token_ids=row.pending_ids,
        text=text,
        logprobs=row.pending_lp if row.params.logprobs is not None else None,
        top_logprobs=row.pending_top if row.params.logprobs else None,
    )
    row.pending_ids, row.pending_lp, row.pending_top = [], [], []
    return d


def _completion(engine: Engine, row: _Row) -> Completion:
    ids = row.out_ids
    if row.stop_at is not None:
        text = row.text[: row.stop_at]
    else:
        shown = ids[:-1] if ids and row.finish_reason == "stop" and ids[-1] in row.stop_ids else ids
        text = engine.tokenizer.decode(shown, skip_special_tokens=True)
    engine.stats["requests_finished"] += 1
    engine.stats["prompt_tokens"] += len(row.prompt_ids)
    lp = row.params.logprobs
    return Completion(
        prompt_token_ids=row.prompt_ids,
        token_ids=list(ids),
        text=text,
        finish_reason=row.finish_reason or "length",
        logprobs=list(row.logprobs) if lp is not None else None,
        top_logprobs=list(row.top_logprobs) if lp else None,
        stop_reason=row.stop_reason,
    )


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - configs that the layer-type dispatch does not know
        return DynamicCache()


def _merge_supported(a: Any, b: Any) -> bool:
    from transformers.cache_utils import DynamicCache, DynamicLayer

    return (
        isinstance(a, DynamicCache)
        and isinstance(b, DynamicCache)
        and all(type(layer) is DynamicLayer for layer in list(a.layers) + list(b.layers))
    )


def _concat_caches(a: Any, mask_a: Any, b: Any, mask_b: Any) -> tuple[Any, Any]:
    """Stack cache `b` under cache `a` (batch dim), left-padding the shorter one in time."""
    import torch
    import torch.nn.functional as F

    la, lb = mask_a.shape[1], mask_b.shape[1]
    width = max(la, lb)
    for layer_a, layer_b in zip(a.layers, b.layers, strict=True):
        if not layer_a.is_initialized or not layer_b.is_initialized:
            continue
        ka = F.pad(layer_a.keys, (0, 0, width - la, 0))
        va = F.pad(layer_a.values, (0, 0, width - la, 0))
        kb = F.pad(layer_b.keys, (0, 0, width - lb, 0))
        vb = F.pad(layer_b.values, (0, 0, width - lb, 0))
        layer_a.keys = torch.cat([ka, kb])
        layer_a.values = torch.cat([va, vb])
    mask = torch.cat([F.pad(mask_a, (width - la, 0)), F.pad(mask_b, (width - lb, 0))])
    return a, mask


def _trim_left(cache: Any, n: int) -> None:
    for layer in cache.layers:
        if layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, n:, :]
            layer.values = layer.values[:, :, n:, :]


@contextlib.contextmanager
def _inference(model: Any) -> Iterator[None]:
    """Eval mode and no autograd for generation, restoring the caller's train/eval mode afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def _model_device(model: Any) -> Any:
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(t) for t in eos)
    return frozenset(ids)


def _max_context(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _vocab_size(model: Any) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return int(emb.weight.shape[0])
    return int(model.config.get_text_config(decoder=True).vocab_size)


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _accepts(model: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _progress(total: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        return None
    return tqdm(total=total, desc="generate")
