"""The OpenAI-compatible server: the real `openai` client against uvicorn on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

from trellis.config.serve import ServeConfig
from trellis.errors import TrellisError
from trellis.serving.engine import Engine
from trellis.serving.sampling import SamplingParams
from trellis.serving.server import build_app, check_bind, create_app

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    e = Engine(model, tokenizer, max_batch_size=4)
    yield e
    e.shutdown()


@pytest.fixture(scope="module")
def base_url(engine, tokenizer):
    import uvicorn

    cfg = ServeConfig(max_tokens_limit=64, max_queue=32)
    app = create_app(engine, tokenizer, MODEL, cfg, default_temperature=1.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_health_and_models(base_url, client):
    assert httpx.get(base_url + "/health").json() == {"status": "ok"}
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_is_the_engine_output(client, engine):
    r = client.completions.create(model=MODEL, prompt="First Citizen:", max_tokens=10, temperature=0)
    want = engine.generate(["First Citizen:"], SamplingParams(temperature=0, max_tokens=10))[0]
    assert r.choices[0].text == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)
    assert r.usage.completion_tokens == len(want.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_completion_and_streaming_agree(client, engine):
    messages = [{"role": "user", "content": "Speak, speak."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    want = engine.generate([engine.chat_prompt_ids(messages)], SamplingParams(temperature=0, max_tokens=12))[
        0
    ]
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.usage.prompt_tokens == len(want.prompt_token_ids)

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_streaming_completion_ends_with_done(base_url, client):
    full = client.completions.create(model=MODEL, prompt="All:", max_tokens=15, temperature=0)
    stream = client.completions.create(model=MODEL, prompt="All:", max_tokens=15, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream) == full.choices[0].text
    with httpx.stream(
        "POST", base_url + "/v1/completions", json={"prompt": "All:", "max_tokens": 3, "stream": True}
    ) as resp:
        lines = [ln for ln in resp.iter_lines() if ln]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_stop_string(client):
    free = client.completions.create(model=MODEL, prompt="All:", max_tokens=20, temperature=0).choices[0].text
    stop = next(free[i : i + 2] for i in range(3, len(free) - 2) if free[i : i + 2].isprintable())
    r = client.completions.create(model=MODEL, prompt="All:", max_tokens=20, temperature=0, stop=[stop])
    assert r.choices[0].text == free[: free.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    s = client.completions.create(
        model=MODEL, prompt="All:", max_tokens=20, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in s) == r.choices[0].text


def test_seed_determinism_and_n(client):
    kw = {"model": MODEL, "prompt": "Before we proceed", "max_tokens": 16, "temperature": 1.0}
    a = client.completions.create(seed=7, n=2, **kw)
    b = client.completions.create(seed=7, n=2, **kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len(a.choices) == 2 and a.choices[0].text != a.choices[1].text
    c = client.completions.create(seed=8, **kw)
    assert c.choices[0].text != a.choices[0].text


def test_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="All:", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 5 and all(x <= 0 for x in lp.token_logprobs)
    assert all(len(d) <= 2 for d in lp.top_logprobs)
    c = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and len(content[0].top_logprobs) == 2


@pytest.mark.parametrize(
    ("kwargs", "status", "param"),
    [
        ({"model": "gpt-nope"}, 404, "model"),
        ({"max_tokens": -1}, 400, "max_tokens"),
        ({"max_tokens": 65}, 400, "max_tokens"),  # above max_tokens_limit
        ({"top_p": 1.5}, 400, "top_p"),
        ({"temperature": -1}, 400, "temperature"),
        ({"prompt": "speak " * 400}, 400, "prompt"),  # longer than the 256-token context
        ({"prompt": 5}, 400, "prompt"),
    ],
)
def test_invalid_requests_get_openai_errors(client, kwargs, status, param):
    args = {"model": MODEL, "prompt": "All:", "max_tokens": 4, **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.completions.create(**args)
    assert info.value.status_code == status
    err = info.value.body
    err = err.get("error", err)
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and err["message"]
    # and the server keeps serving
    assert client.completions.create(model=MODEL, prompt="All:", max_tokens=2).choices[0].text is not None


def test_bad_json_and_bad_messages(base_url):
    r = httpx.post(
        base_url + "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(base_url + "/v1/chat/completions", json={"messages": "hi"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.get(base_url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_metrics(base_url, client):
    client.completions.create(model=MODEL, prompt="All:", max_tokens=3)
    text = httpx.get(base_url + "/metrics").text
    assert 'trellis_requests_total{endpoint="/v1/completions",status="200"}' in text
    generated = next(ln for ln in text.splitlines() if ln.startswith("trellis_generated_tokens_total"))
    assert int(generated.split()[1]) >= 3
    for name in ("trellis_queue_depth", "trellis_request_latency_seconds_count", "trellis_running_requests"):
        assert name in text


def test_api_key_and_full_queue(engine, tokenizer):
    from fastapi.testclient import TestClient

    app = create_app(engine, tokenizer, MODEL, ServeConfig(api_key="sekret", max_queue=0))
    with TestClient(app) as tc:
        body = {"prompt": "All:", "max_tokens": 2}
        r = tc.post("/v1/completions", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = tc.post("/v1/completions", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = tc.post("/v1/completions", json=body, headers={"Authorization": "Bearer sekret"})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert tc.get("/health").status_code == 200


def test_refuses_public_bind_without_key():
    with pytest.raises(TrellisError, match="api_key"):
        check_bind(ServeConfig(host="0.0.0.0"))
    check_bind(ServeConfig(host="0.0.0.0", api_key="k"))
    check_bind(ServeConfig(host="127.0.0.1"))
    check_bind(ServeConfig(host="::1"))


def test_checkpoint_default_temperature(checkpoint_dir):
    app = build_app(checkpoint_dir, ServeConfig())
    try:
        assert app.state.trellis.default_temperature == pytest.approx(0.7)
        assert app.state.trellis.engine.lean_decode is not None  # a Llama checkpoint: on by default
        assert app.state.trellis.model_name == checkpoint_dir.name
    finally:
        app.state.trellis.engine.shutdown()


def test_concurrent_requests_share_the_batch(client, engine):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [f"Citizen {i}:" for i in range(8)]
    lengths = [3 + 2 * i for i in range(8)]

    def ask(i):
        r = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=lengths[i], temperature=0)
        return r.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(ask, range(8)))
    want = engine.generate(prompts, [SamplingParams(temperature=0, max_tokens=n) for n in lengths])
    assert got == [w.text for w in want]


def test_default_model_name_of_a_stage_checkpoint(tmp_path):
    from trellis.serving.server import default_model_name

    assert default_model_name(tmp_path / "quickstart" / "rlhf" / "final") == "quickstart-rlhf"
    assert default_model_name(tmp_path / "my-model") == "my-model"


def test_serve_config_reaches_the_engine(checkpoint_dir):
    app = build_app(checkpoint_dir, ServeConfig(max_prefill_tokens=64, prefix_cache_mb=0, lean_decode=False))
    try:
        engine = app.state.trellis.engine
        assert engine.max_prefill_tokens == 64
        assert engine.prefix_cache is None
        assert engine.lean_decode is None
    finally:
        app.state.trellis.engine.shutdown()
