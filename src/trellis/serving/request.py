"""One generation request as the engine sees it: its handle, its row state and its text bookkeeping.

`Completion`, `StreamDelta` and `RequestHandle` are the public results (re-exported by `engine`); `Row` is
the engine's per-request state, and the helpers below turn its generated ids into streamed text.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from trellis.serving.sampling import SamplingParams, draws_ahead


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


def push_deltas(items: list[tuple[RequestHandle, StreamDelta]]) -> None:
    """Hand each delta to its request's consumer. The handles read from one event loop get all of theirs in
    one `call_soon_threadsafe`: one wake-up of that loop (a pipe write) per engine step, not one per request.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestHandle, StreamDelta]]] = {}
    for handle, delta in items:
        if delta.completion is not None:
            handle.completion = delta.completion
        if handle._async_q is not None and handle._loop is not None:
            by_loop.setdefault(handle._loop, []).append((handle, delta))
        else:
            handle._sync_q.put(delta)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, group)
        except RuntimeError:  # the consumers' event loop is gone: nobody is listening
            for handle, _ in group:
                handle.cancelled = True
    for handle, delta in items:
        if delta.completion is not None:
            handle._done.set()


def _put_all(group: list[tuple[RequestHandle, StreamDelta]]) -> None:
    for handle, delta in group:
        assert handle._async_q is not None
        handle._async_q.put_nowait(delta)


@dataclass(eq=False)  # rows are compared by identity: two requests may be alike field for field
class Row:
    prompt_ids: list[int]
    params: SamplingParams
    generator: Any  # torch.Generator
    stop_ids: frozenset[int]
    handle: RequestHandle | None = None
    # most tokens to generate: max_tokens, fewer where prompt + output would outgrow the model's context
    max_out: int | None = None
    index: int = 0  # position in the caller's prompt list (generate)
    # prefill progress: the first `prefilled` prompt tokens have their keys/values in `kv`
    # (per layer a (key, value) pair of [1, heads, prefilled, head_dim]), from a prefix cache or earlier chunks
    prefilled: int = 0
    kv: list[tuple[Any, Any]] | None = None
    reused: int = 0  # prompt tokens whose keys/values came from the prefix cache
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
    draws: Any = None  # the uniforms of all its tokens, drawn ahead from `generator` once sampling needs them

    def uniform_table(self) -> Any:
        if self.draws is None:
            assert self.max_out is not None
            self.draws = draws_ahead(self.generator, self.max_out)
        return self.draws

    def __post_init__(self) -> None:
        if self.max_out is None:
            self.max_out = self.params.max_tokens

    @property
    def cancelled(self) -> bool:
        return self.handle is not None and self.handle.cancelled


# ---- text --------------------------------------------------------------------------------------------
def decode_step(tokenizer: Any, row: Row) -> None:
    """Incremental detokenization (as in TGI/vLLM): re-decode a short window, append only settled text."""
    ids = row.out_ids
    prefix = tokenizer.decode(ids[row.prefix_offset : row.read_offset], skip_special_tokens=True)
    full = tokenizer.decode(ids[row.prefix_offset :], skip_special_tokens=True)
    if len(full) > len(prefix) and not full.endswith("\ufffd"):
        row.text += full[len(prefix) :]
        row.prefix_offset, row.read_offset = row.read_offset, len(ids)


def find_stop(row: Row) -> bool:
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


def stream_safe_len(text: str, stops: list[str]) -> int:
    """How much of `text` can be streamed: hold back a tail that could still grow into a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return len(text) - hold


def take_delta(row: Row, text: str) -> StreamDelta:
    """The tokens generated since the last delta, with `text`; clears the row's pending lists."""
    d = StreamDelta(
        token_ids=row.pending_ids,
        text=text,
        logprobs=row.pending_lp if row.params.logprobs is not None else None,
        top_logprobs=row.pending_top if row.params.logprobs else None,
    )
    row.pending_ids, row.pending_lp, row.pending_top = [], [], []
    return d


def completion_of(tokenizer: Any, row: Row) -> Completion:
    ids = row.out_ids
    if row.stop_at is not None:
        text = row.text[: row.stop_at]
    else:
        shown = ids[:-1] if ids and row.finish_reason == "stop" and ids[-1] in row.stop_ids else ids
        text = tokenizer.decode(shown, skip_special_tokens=True)
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
