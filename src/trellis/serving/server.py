"""An OpenAI-compatible HTTP server over the generation engine (imported lazily by the CLI).

`create_app` builds the FastAPI app around an `Engine` (so tests and other code can serve any model
object); `serve` loads a checkpoint and runs uvicorn. Requests are validated by hand so that every
failure answers with an OpenAI error body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from trellis.config.serve import ServeConfig
from trellis.errors import TrellisError
from trellis.serving.engine import Completion, Engine, RequestHandle
from trellis.serving.sampling import SamplingParams
from trellis.serving.schema import ChatCompletionRequest, CompletionRequest, request_body

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Metrics:
    """Counters, gauges and histograms written out in the Prometheus text format."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.latency = _Histogram(LATENCY_BUCKETS)
        self.ttft = _Histogram(LATENCY_BUCKETS)

    def count(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def render(self, engine: Engine) -> str:
        lines = [
            "# HELP trellis_requests_total HTTP requests by endpoint and status code.",
            "# TYPE trellis_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            lines.append(f'trellis_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        lines += [
            "# HELP trellis_prompt_tokens_total Prompt tokens of finished generation requests.",
            "# TYPE trellis_prompt_tokens_total counter",
            f"trellis_prompt_tokens_total {self.prompt_tokens}",
            "# HELP trellis_generated_tokens_total Tokens generated for finished requests.",
            "# TYPE trellis_generated_tokens_total counter",
            f"trellis_generated_tokens_total {self.generated_tokens}",
            "# HELP trellis_queue_depth Requests waiting for a batch slot.",
            "# TYPE trellis_queue_depth gauge",
            f"trellis_queue_depth {engine.num_waiting}",
            "# HELP trellis_running_requests Requests in the running batch.",
            "# TYPE trellis_running_requests gauge",
            f"trellis_running_requests {engine.num_running}",
            "# HELP trellis_prefill_tokens_total Prompt tokens computed (not taken from the prefix cache).",
            "# TYPE trellis_prefill_tokens_total counter",
            f"trellis_prefill_tokens_total {engine.stats['prefill_tokens']}",
        ]
        cache = engine.prefix_cache
        if cache is not None:
            lines += [
                "# HELP trellis_prefix_cache_reused_tokens_total Prompt tokens served from the prefix cache.",
                "# TYPE trellis_prefix_cache_reused_tokens_total counter",
                f"trellis_prefix_cache_reused_tokens_total {cache.reused_tokens}",
                "# HELP trellis_prefix_cache_bytes Memory held by the prefix cache.",
                "# TYPE trellis_prefix_cache_bytes gauge",
                f"trellis_prefix_cache_bytes {cache.bytes}",
            ]
        lines += self.latency.render("trellis_request_latency_seconds", "Time from request to last token.")
        lines += self.ttft.render("trellis_time_to_first_token_seconds", "Time from request to first token.")
        return "\n".join(lines) + "\n"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.n += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def render(self, name: str, help_: str) -> list[str]:
        out = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.n}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {self.n}",
        ]
        return out


# ---- request parsing -----------------------------------------------------------------------------------
def _number(body: dict, name: str, default: float | None, lo: float | None = None, hi: float | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(value)}", name, "invalid_type")
    if lo is not None and value < lo:
        raise APIError(400, f"'{name}' must be >= {lo}, got {value}", name, "invalid_value")
    if hi is not None and value > hi:
        raise APIError(400, f"'{name}' must be <= {hi}, got {value}", name, "invalid_value")
    return value


def _integer(body: dict, name: str, default: int | None, lo: int | None = None, hi: int | None = None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"'{name}' must be an integer, got {json.dumps(value)}", name, "invalid_type")
    return _number(body, name, default, lo, hi)


class _Request:
    """The parts of a completion or chat request that both endpoints share."""

    def __init__(self, body: dict, prompts: list[list[int]], app_state: _State, chat: bool) -> None:
        cfg, engine = app_state.cfg, app_state.engine
        self.chat = chat
        self.prompts = prompts
        self.n = _integer(body, "n", 1, 1, 16)
        self.stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        self.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
        if chat:
            max_tokens = _integer(body, "max_completion_tokens", None)
            max_tokens = _integer(body, "max_tokens", max_tokens)
            name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
            if body.get("logprobs"):
                self.logprobs = _integer(body, "top_logprobs", 0, 0, 20)
            else:
                self.logprobs = None
        else:
            max_tokens = _integer(body, "max_tokens", 16)
            name = "max_tokens"
            self.logprobs = _integer(body, "logprobs", None, 0, 5)
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"'{name}' must be at least 1, got {max_tokens}", name, "invalid_value")
        if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
            raise APIError(
                400,
                f"'{name}' is {max_tokens}, above this server's limit of {cfg.max_tokens_limit}",
                name,
                "invalid_value",
            )
        context = engine.max_context
        for ids in prompts:
            if context is not None and len(ids) >= context:
                raise APIError(
                    400,
                    f"this model's maximum context length is {context} tokens; the prompt has {len(ids)}",
                    "messages" if chat else "prompt",
                    "context_length_exceeded",
                )
        if max_tokens is None:  # chat default: as much as the limit and the context allow
            room = min(context - len(ids) for ids in prompts) if context is not None else cfg.max_tokens_limit
            max_tokens = max(1, min(cfg.max_tokens_limit, room))
        stop = body.get("stop")
        if stop is None:
            stop = []
        elif isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a string or a list of at most 4 non-empty strings", "stop")
        seed = _integer(body, "seed", None)
        temperature = _number(body, "temperature", app_state.default_temperature, 0.0, 2.0)
        self.params: list[SamplingParams] = []
        try:
            base = {
                "temperature": float(temperature),
                "top_p": float(_number(body, "top_p", app_state.default_top_p, 0.0, 1.0)),
                "top_k": int(_integer(body, "top_k", 0, 0) or 0),
                "min_p": float(_number(body, "min_p", 0.0, 0.0, 1.0)),
                "max_tokens": int(max_tokens),
                "stop": stop,
                "stop_token_ids": list(body.get("stop_token_ids") or []),
                "logprobs": self.logprobs,
                "repetition_penalty": float(_number(body, "repetition_penalty", 1.0, 0.0)),
                "presence_penalty": float(_number(body, "presence_penalty", 0.0, -2.0, 2.0)),
                "frequency_penalty": float(_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
                "ignore_eos": bool(body.get("ignore_eos", False)),
            }
            for _ in prompts:
                for i in range(self.n):
                    self.params.append(SamplingParams(**base, seed=None if seed is None else seed + i))
        except ValueError as exc:
            field = str(exc).split(":", 1)[0]
            raise APIError(400, str(exc), field, "invalid_value") from None


class _State:
    def __init__(self, engine: Engine, tokenizer: Any, model_name: str, cfg: ServeConfig, temperature: float,
                 top_p: float = 1.0):
        self.engine, self.tokenizer, self.model_name, self.cfg = engine, tokenizer, model_name, cfg
        self.default_temperature = temperature
        self.default_top_p = top_p
        self.metrics = Metrics()
        self.created = int(time.time())


def _default_temperature(model: Any) -> float:
    gc = getattr(model, "generation_config", None)
    value = getattr(gc, "temperature", None) if gc is not None else None
    return float(value) if isinstance(value, (int, float)) and value >= 0 else 1.0


def create_app(
    engine: Engine,
    tokenizer: Any,
    model_name: str,
    cfg: ServeConfig | None = None,
    default_temperature: float | None = None,
    default_top_p: float | None = None,
):
    """The FastAPI app. A request's default temperature and top_p are the model's generation_config
    values (a calibrated temperature; setup B's nucleus p = 0.9), else 1.0."""
    cfg = cfg or ServeConfig()
    if default_temperature is None:
        default_temperature = _default_temperature(engine.model)
    if default_top_p is None:
        default_top_p = _top_p_or_1(getattr(getattr(engine.model, "generation_config", None), "top_p", None))
    state = _State(engine, tokenizer, model_name, cfg, default_temperature, default_top_p)
    # the schema is public like /health; the interactive docs pages would load scripts from a CDN
    app = FastAPI(
        title="Trellis",
        summary="An OpenAI-compatible completion server",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.trellis = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        state.metrics.count(request.url.path, exc.status)
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc: Exception):
        err = APIError(404, f"no route {request.method} {request.url.path}", None, "not_found")
        return JSONResponse(err.body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc: Exception):
        err = APIError(
            405, f"method {request.method} not allowed on {request.url.path}", None, "method_not_allowed"
        )
        return JSONResponse(err.body(), status_code=405)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        state.metrics.count(request.url.path, 500)
        err = APIError(
            500, f"internal error: {type(exc).__name__}: {exc}", None, "internal_error", "server_error"
        )
        return JSONResponse(err.body(), status_code=500)

    def check_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), cfg.api_key):
            raise APIError(
                401,
                "missing or invalid API key (send 'Authorization: Bearer <key>')",
                None,
                "invalid_api_key",
            )

    async def read_body(request: Request) -> dict:
        check_auth(request)
        raw = await request.body()
        if len(raw) > cfg.max_request_bytes:
            raise APIError(
                413,
                f"request body of {len(raw)} bytes exceeds {cfg.max_request_bytes}",
                None,
                "request_too_large",
            )
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"request body is not valid JSON: {exc}", None, "invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object", None, "invalid_json")
        model = body.get("model")
        if model is not None and model != model_name:
            raise APIError(
                404,
                f"the model '{model}' does not exist; this server serves '{model_name}'",
                "model",
                "model_not_found",
            )
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": state.created,
                    "owned_by": "trellis",
                    "max_model_len": engine.max_context,
                }
            ],
        }

    @app.get("/metrics")
    async def metrics(request: Request):
        check_auth(request)
        return PlainTextResponse(state.metrics.render(engine), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions", openapi_extra=request_body(CompletionRequest))
    async def completions(request: Request):
        body = await read_body(request)
        prompts = _completion_prompts(body.get("prompt"), engine)
        req = _Request(body, prompts, state, chat=False)
        return await _respond(request, req, state, JSONResponse, StreamingResponse)

    @app.post("/v1/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
    async def chat_completions(request: Request):
        body = await read_body(request)
        messages = _messages(body.get("messages"))
        try:
            ids = engine.chat_prompt_ids(messages)
        except Exception as exc:  # noqa: BLE001 - template errors are the caller's messages at fault
            raise APIError(400, f"could not apply the chat template: {exc}", "messages") from None
        req = _Request(body, [ids], state, chat=True)
        return await _respond(request, req, state, JSONResponse, StreamingResponse)

    return app


def _completion_prompts(prompt: Any, engine: Engine) -> list[list[int]]:
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        prompts = prompt
    else:
        raise APIError(400, "'prompt' must be a string, a list of strings or a list of token ids", "prompt")
    if len(prompts) > 64:
        raise APIError(400, f"at most 64 prompts per request, got {len(prompts)}", "prompt")
    out = []
    for p in prompts:
        if isinstance(p, list) and not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < engine.vocab_size for t in p
        ):
            raise APIError(400, f"token ids must be integers in [0, {engine.vocab_size})", "prompt")
        ids = engine.encode(p) if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, "'prompt' encodes to no tokens", "prompt")
        out.append(ids)
    return out


def _messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "user",
            "assistant",
            "developer",
            "tool",
        ):
            raise APIError(400, f"messages[{i}] needs a 'role' of system, user or assistant", "messages")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}]
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(p, str) for p in parts):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "".join(parts)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", "messages")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": content})
    return out


# ---- responses -----------------------------------------------------------------------------------------
async def _respond(request: Any, req: _Request, state: _State, json_response: Any, streaming_response: Any):
    engine, cfg = state.engine, state.cfg
    path = request.url.path
    if engine.num_waiting + len(req.params) > cfg.max_queue:
        raise APIError(
            429,
            f"the server is busy ({engine.num_waiting} requests waiting); retry later",
            None,
            "queue_full",
            "rate_limit_error",
        )
    started = time.monotonic()
    rid = ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]
    handles: list[RequestHandle] = []
    try:
        for i, params in enumerate(req.params):
            handles.append(engine.submit(req.prompts[i // req.n], params, request_id=f"{rid}-{i}"))
    except ValueError as exc:
        for h in handles:
            h.cancel()
        raise APIError(400, str(exc)) from None
    except RuntimeError as exc:  # the engine is shut down: the server is on its way out
        for h in handles:
            h.cancel()
        raise APIError(
            503, f"the server is shutting down ({exc}); retry later", None, "unavailable", "server_error"
        ) from None
    if req.stream:
        gen = _stream(req, state, handles, rid, started)
        state.metrics.count(path, 200)
        return streaming_response(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        comps = await asyncio.wait_for(asyncio.gather(*(h.aresult() for h in handles)), cfg.request_timeout_s)
    except TimeoutError:
        for h in handles:
            h.cancel()
        raise APIError(
            504, f"generation took longer than {cfg.request_timeout_s} s", None, "timeout", "server_error"
        ) from None
    except asyncio.CancelledError:  # the client went away
        for h in handles:
            h.cancel()
        raise
    _observe(state, handles, comps, started)
    state.metrics.count(path, 200)
    return json_response(_full_body(req, state, rid, comps))


def _observe(state: _State, handles: list[RequestHandle], comps: list[Completion], started: float) -> None:
    m = state.metrics
    m.latency.observe(time.monotonic() - started)
    firsts = [h.first_token_at for h in handles if h.first_token_at is not None]
    if firsts:
        m.ttft.observe(min(firsts) - started)
    m.generated_tokens += sum(len(c.token_ids) for c in comps)
    m.prompt_tokens += sum(len(c.prompt_token_ids) for c in comps)


def _usage(req: _Request, comps: list[Completion]) -> dict[str, int]:
    prompt = sum(len(p) for p in req.prompts)
    completion = sum(len(c.token_ids) for c in comps)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish(reason: str | None) -> str | None:
    return "stop" if reason == "abort" else reason


def _full_body(req: _Request, state: _State, rid: str, comps: list[Completion]) -> dict:
    choices = []
    for i, c in enumerate(comps):
        if req.chat:
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": _chat_logprobs(state.tokenizer, c.token_ids, c.logprobs, c.top_logprobs),
                    "finish_reason": _finish(c.finish_reason),
                }
            )
        else:
            choices.append(
                {
                    "index": i,
                    "text": c.text,
                    "logprobs": _completion_logprobs(
                        state.tokenizer, c.token_ids, c.logprobs, c.top_logprobs, 0
                    ),
                    "finish_reason": _finish(c.finish_reason),
                }
            )
    return {
        "id": rid,
        "object": "chat.completion" if req.chat else "text_completion",
        "created": int(time.time()),
        "model": state.model_name,
        "choices": choices,
        "usage": _usage(req, comps),
    }


def _token_str(tokenizer: Any, t: int) -> str:
    return tokenizer.decode([t])


def _chat_logprobs(tokenizer: Any, ids: list[int], lps: list[float] | None, tops: list | None) -> dict | None:
    if lps is None:
        return None
    content = []
    for j, (t, lp) in enumerate(zip(ids, lps, strict=False)):
        s = _token_str(tokenizer, t)
        top = []
        if tops:
            top = [
                {"token": (ts := _token_str(tokenizer, k)), "logprob": v, "bytes": list(ts.encode())}
                for k, v in tops[j].items()
            ]
        content.append({"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": top})
    return {"content": content}


def _completion_logprobs(
    tokenizer: Any, ids: list[int], lps: list[float] | None, tops: list | None, offset: int
) -> dict | None:
    if lps is None:
        return None
    tokens = [_token_str(tokenizer, t) for t in ids[: len(lps)]]
    offsets = []
    for s in tokens:
        offsets.append(offset)
        offset += len(s)
    return {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": [{_token_str(tokenizer, k): v for k, v in d.items()} for d in tops] if tops else None,
        "text_offset": offsets,
    }


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def _stream(
    req: _Request, state: _State, handles: list[RequestHandle], rid: str, started: float
) -> AsyncIterator[str]:
    """SSE chunks in OpenAI's format, choices interleaved as their tokens arrive, then `data: [DONE]`."""
    created = int(time.time())
    obj = "chat.completion.chunk" if req.chat else "text_completion"
    base = {"id": rid, "object": obj, "created": created, "model": state.model_name}
    q: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        async for d in h:
            await q.put((i, d))
        await q.put((i, None))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    comps: list[Completion | None] = [None] * len(handles)
    text_offsets = [0] * len(handles)
    try:
        if req.chat:
            for i in range(len(handles)):
                yield _sse(
                    {
                        **base,
                        "choices": [
                            {
                                "index": i,
                                "delta": {"role": "assistant", "content": ""},
                                "logprobs": None,
                                "finish_reason": None,
                            }
                        ],
                    }
                )
        open_ = len(handles)
        deadline = started + state.cfg.request_timeout_s
        while open_:
            try:
                i, d = await asyncio.wait_for(q.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                for h in handles:
                    h.cancel()
                err = APIError(
                    504,
                    f"generation took longer than {state.cfg.request_timeout_s} s",
                    None,
                    "timeout",
                    "server_error",
                )
                yield _sse(err.body())
                break
            if d is None:
                open_ -= 1
                continue
            if d.completion is not None:
                comps[i] = d.completion
                if handles[i].error is not None:
                    err = APIError(
                        500, f"generation failed: {handles[i].error}", None, "internal_error", "server_error"
                    )
                    yield _sse(err.body())
                    continue
            if not d.text and not d.token_ids and d.finish_reason is None:
                continue
            if req.chat:
                choice = {
                    "index": i,
                    "delta": {"content": d.text} if (d.text or d.finish_reason is None) else {},
                    "logprobs": _chat_logprobs(state.tokenizer, d.token_ids, d.logprobs, d.top_logprobs),
                    "finish_reason": _finish(d.finish_reason),
                }
            else:
                choice = {
                    "index": i,
                    "text": d.text,
                    "logprobs": _completion_logprobs(
                        state.tokenizer, d.token_ids, d.logprobs, d.top_logprobs, text_offsets[i]
                    ),
                    "finish_reason": _finish(d.finish_reason),
                }
                text_offsets[i] += len(d.text)
            yield _sse({**base, "choices": [choice]})
        done = [c for c in comps if c is not None]
        _observe(state, handles, done, started)
        if req.include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(req, done)})
        yield "data: [DONE]\n\n"
    finally:  # also runs when the client disconnects mid-stream
        for h in handles:
            if not h.done:
                h.cancel()
        for t in tasks:
            t.cancel()


# ---- running -------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(cfg: ServeConfig) -> None:
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise TrellisError(
            f"serve.host={cfg.host} is not loopback: set serve.api_key (or --api-key) before exposing the server"
        )


def _top_p_or_1(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and 0 < value <= 1 else 1.0


def _read_generation_config(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / "generation_config.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrellisError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TrellisError(f"{path}: not valid JSON (expected an object)")
    return data


def read_default_temperature(checkpoint_dir: str | Path) -> float:
    value = _read_generation_config(checkpoint_dir).get("temperature")
    return float(value) if isinstance(value, (int, float)) and value >= 0 else 1.0


def read_default_top_p(checkpoint_dir: str | Path) -> float:
    return _top_p_or_1(_read_generation_config(checkpoint_dir).get("top_p"))


def build_app(checkpoint_dir: str | Path, cfg: ServeConfig):
    """Load a checkpoint into an engine and wrap it in the app (without running a server)."""
    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.device import resolve_device

    check_bind(cfg)
    tokenizer = load_tokenizer(checkpoint_dir)
    model = load_causal_lm(checkpoint_dir, device=resolve_device(cfg.device))
    engine = Engine(model, tokenizer, max_batch_size=cfg.max_batch_size, max_prefill_tokens=cfg.max_prefill_tokens,
                    prefix_cache_mb=cfg.prefix_cache_mb, max_tokens_in_flight=cfg.max_tokens_in_flight,
                    lean_decode=cfg.lean_decode)
    name = cfg.model_name or default_model_name(checkpoint_dir)
    return create_app(
        engine, tokenizer, name, cfg, default_temperature=read_default_temperature(checkpoint_dir),
        default_top_p=read_default_top_p(checkpoint_dir)
    )


def serve(checkpoint_dir: str | Path, cfg: ServeConfig) -> None:
    import uvicorn

    check_bind(cfg)
    app = build_app(checkpoint_dir, cfg)
    engine: Engine = app.state.trellis.engine
    print(f"trellis: serving {app.state.trellis.model_name} on http://{cfg.host}:{cfg.port}/v1", flush=True)
    try:
        # on SIGINT/SIGTERM uvicorn stops accepting connections and lets in-flight requests finish,
        # for at most one request timeout; the engine keeps running until then
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level="warning",
            timeout_graceful_shutdown=int(cfg.request_timeout_s) + 1,
        )
    finally:
        engine.shutdown()


def default_model_name(checkpoint_dir: str | Path) -> str:
    """The served model's id: a stage's `final/` is named after its run and stage (`quickstart-rlhf`)."""
    path = Path(checkpoint_dir).resolve()
    if path.name == "final" and path.parent.parent.name:
        return f"{path.parent.parent.name}-{path.parent.name}"
    return path.name
