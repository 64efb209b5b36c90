"""The generation engine: continuous batching with a KV cache over any transformers causal LM.

One engine serves PPO rollouts, evaluation and the HTTP server. It works on the model object it is given
(no weight copy), so a policy being trained generates with its current weights.

Each engine step (`scheduler.Scheduler`): admit waiting requests up to `max_batch_size`; compute at most
`max_prefill_tokens` prompt tokens, packing several prompts into one forward without padding
(`prefill`) and starting prompts from the keys/values of a shared prefix when the prefix cache has one
(`prefix_cache`); rows whose prompt is done join the running batch (`batch.RunningBatch`), which then
decodes one token for every row. Rows leave as soon as they finish. `generate` runs this loop in the
caller's thread; `submit` hands requests to a background thread that runs the same loop and streams
deltas to `RequestHandle`s. On a CUDA device, once a `generate` call has every prompt in the running
batch, its decode steps replay from a CUDA graph (`graph_decode`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from trellis.serving.request import (
    Completion,
    RequestHandle,
    Row,
    StreamDelta,
    completion_of,
    push_deltas,
    stream_safe_len,
    take_delta,
)
from trellis.serving.sampling import SamplingParams

__all__ = ["Completion", "Engine", "RequestHandle", "StreamDelta"]

_ids = itertools.count()


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 16,
        device: Any = None,
        add_special_tokens: bool = False,
        max_prefill_tokens: int = 512,
        prefix_cache_mb: float = 256.0,
        max_tokens_in_flight: int | None = None,
        lean_decode: bool = True,
        cuda_graphs: bool = True,
    ) -> None:
        """`max_prefill_tokens`: prompt tokens computed per step (the chunked-prefill cap; 512 was the
        fastest chunk for SmolLM2 on the dev CPU). `prefix_cache_mb`: memory for the keys/values of recent
        prompts, reused by prompts sharing a prefix with them (0 turns prefix sharing off).
        `max_tokens_in_flight`: cap on the key/value positions reserved by running requests (prompt +
        max_tokens each), which bounds KV memory whatever the request mix; None leaves only
        `max_batch_size`. `lean_decode`: run decode steps of Llama models through `lean_decode` (the
        model's own operations without its module overhead; other models always use their forward).
        `cuda_graphs`: on a CUDA device, once `generate` has every prompt in the running batch, replay that
        lean step from a CUDA graph (`graph_decode`); it needs the lean step."""
        import torch

        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1 (got {max_batch_size})")
        if max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens: must be >= 1 (got {max_prefill_tokens})")
        if max_tokens_in_flight is not None and max_tokens_in_flight < 1:
            raise ValueError(f"max_tokens_in_flight: must be >= 1 or None (got {max_tokens_in_flight})")
        if prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb: must be >= 0 (got {prefix_cache_mb})")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_prefill_tokens = max_prefill_tokens
        self.max_tokens_in_flight = max_tokens_in_flight
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.add_special_tokens = add_special_tokens
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.max_context = _max_context(model)
        self.vocab_size = _vocab_size(model)
        self.pad_id = _pad_id(tokenizer)
        self._takes_logits_to_keep = _accepts(model, "logits_to_keep")
        from trellis.serving.kv import plain_layers
        from trellis.serving.prefix_cache import PrefixCache

        # rows can be prefilled apart and stacked into the running batch only over plain cache layers
        self.stackable = plain_layers(model)
        # decode steps hand such a model the `[B, 1, 1, width]` bool mask that transformers' mask builder
        # would make from the 2D one (for sdpa over full-attention layers), skipping that work every step
        self.prebuilt_decode_mask = self.stackable and _attn_implementation(model) == "sdpa"
        from trellis.serving.lean_decode import lean_decode_step

        self.lean_decode = lean_decode_step(model) if lean_decode and self.stackable else None
        self.graph_decoder: Any = None
        if cuda_graphs and self.lean_decode is not None and self.device.type == "cuda":
            from trellis.serving.graph_decode import GraphDecoder

            self.graph_decoder = GraphDecoder(self.lean_decode, capture=True)
        self._packing: bool | None = None  # whether the model honours packed masks; checked on first use
        self.prefix_cache = PrefixCache(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        # background loop state (submit/stream path)
        self._waiting: deque[Row] = deque()
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.num_running = 0
        self.last_error: BaseException | None = None
        self.stats = {
            "requests_finished": 0,
            "generated_tokens": 0,
            "prompt_tokens": 0,
            "prefill_tokens": 0,  # prompt tokens computed (the rest came from the prefix cache)
            "prefill_forwards": 0,
        }

    @property
    def packing(self) -> bool:
        """Whether prompts are packed into shared forwards (else each is computed in its own)."""
        if self._packing is None:
            from trellis.serving.prefill import packing_works

            with _inference(self.model):
                self._packing = packing_works(
                    self.model, self.device, self._takes_logits_to_keep, self.vocab_size
                )
        return self._packing

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

    def _make_row(self, prompt_ids: list[int], params: SamplingParams, index: int = 0) -> Row:
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
        max_out = params.max_tokens
        if self.max_context is not None:  # a prompt at or past the context still gets its one token
            max_out = min(max_out, self.max_context - len(prompt_ids))
        return Row(list(prompt_ids), params, gen, frozenset(stop_ids), index=index, max_out=max_out)

    def _completion(self, row: Row) -> Completion:
        self.stats["requests_finished"] += 1
        self.stats["prompt_tokens"] += len(row.prompt_ids)
        return completion_of(self.tokenizer, row)

    def _new_scheduler(self, call_scoped: bool) -> Any:
        """`call_scoped` (generate): a prefix cache of this call alone, since a policy being trained may
        change its weights between calls in ways no version counter sees (`p.data.copy_`)."""
        from trellis.serving.prefix_cache import PrefixCache
        from trellis.serving.scheduler import Scheduler

        cache = self.prefix_cache
        if cache is not None and call_scoped:
            cache = PrefixCache(cache.max_bytes)
        elif cache is not None:
            cache.check_weights(self.model)
        return Scheduler(self, cache)

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
            sched = self._new_scheduler(call_scoped=True)
            while rows or not sched.idle:
                while rows and sched.has_room(rows[0]):
                    sched.admit(rows.popleft())
                sched.prefill()
                sched.batch.closed = not rows and not sched.prefilling
                for row in sched.batch.step():
                    results[row.index] = self._completion(row)
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

    def shutdown(self, timeout: float = 10.0, drain: bool = False) -> None:
        """Stop the background loop. `drain`: first finish every request already submitted (a graceful
        shutdown); otherwise requests still waiting or running end with finish_reason "abort"."""
        if drain:
            deadline = time.monotonic() + timeout
            while (self._waiting or self.num_running) and time.monotonic() < deadline:
                time.sleep(0.01)
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
        sched = self._new_scheduler(call_scoped=False)
        try:
            while True:
                with self._cv:
                    if self._stopping:
                        self._abort_waiting()
                        for row in sched.rows:
                            self._finish_stream(row, "abort")
                        return
                    while self._waiting and sched.has_room(self._waiting[0]):
                        row = self._waiting.popleft()
                        if row.cancelled:
                            self._finish_stream(row, "abort")
                        else:
                            sched.admit(row)
                    if sched.idle:
                        return
                    self.num_running = len(sched.rows)
                for row in [r for r in sched.rows if r.cancelled]:
                    sched.drop(row)
                    self._finish_stream(row, "abort")
                deltas: list[tuple[RequestHandle, StreamDelta]] = []
                for row in sched.prefill():
                    if row.finish_reason is None:
                        self._emit(row, deltas)
                push_deltas(deltas)  # before the decode step: first tokens go out without waiting for it
                deltas = []
                finished = sched.batch.step()
                for row in sched.batch.rows:
                    self._emit(row, deltas)
                for row in finished:
                    self._final_delta(row, row.finish_reason or "stop", deltas)
                push_deltas(deltas)
                self.num_running = len(sched.rows)
        except Exception as exc:  # noqa: BLE001 - fail the requests in flight, keep the loop alive
            self._fail(sched.rows, exc)
        finally:
            self.num_running = 0

    def _emit(self, row: Row, out: list[tuple[RequestHandle, StreamDelta]]) -> None:
        """Add the row's new tokens and settled text, if any, to `out`."""
        assert row.handle is not None
        if not row.pending_ids:
            return
        if row.handle.first_token_at is None:
            row.handle.first_token_at = time.monotonic()
        safe = stream_safe_len(row.text, row.params.stop)
        delta = row.text[row.emitted : safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        out.append((row.handle, take_delta(row, delta)))

    def _finish_stream(self, row: Row, reason: str) -> None:
        out: list[tuple[RequestHandle, StreamDelta]] = []
        self._final_delta(row, reason, out)
        push_deltas(out)

    def _final_delta(self, row: Row, reason: str, out: list[tuple[RequestHandle, StreamDelta]]) -> None:
        """Add the row's last delta (the rest of its tokens and text, and its completion) to `out`."""
        if row.handle is None:
            return
        if reason == "abort":
            row.finish_reason = "abort"
        comp = self._completion(row)
        if row.handle.first_token_at is None:
            row.handle.first_token_at = time.monotonic()
        rest = comp.text[row.emitted :] if comp.text.startswith(row.text[: row.emitted]) else ""
        d = take_delta(row, rest)
        d.finish_reason, d.completion = comp.finish_reason, comp
        out.append((row.handle, d))

    def _abort_waiting(self) -> None:
        while self._waiting:
            self._finish_stream(self._waiting.popleft(), "abort")

    def _fail(self, rows: list[Row], exc: Exception) -> None:
        for row in rows:
            if row.handle is not None:
                row.handle.error = exc
            self._finish_stream(row, "abort")
        self.last_error = exc


# ---- helpers -------------------------------------------------------------------------------------------
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


def _attn_implementation(model: Any) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


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
