"""The server's safe defaults: checkpoint temperature, limits, timeouts, 503, graceful shutdown, OpenAPI."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from trellis.config.serve import ServeConfig
from trellis.serving.engine import Engine
from trellis.serving.sampling import SamplingParams
from trellis.serving.server import build_app, create_app

MODEL = "tiny"


@pytest.fixture
def engine(model, tokenizer):
    e = Engine(model, tokenizer, max_batch_size=4)
    yield e
    e.shutdown()


def _client(app):
    from fastapi.testclient import TestClient

    return TestClient(app)


def _record_submitted_params(engine, monkeypatch) -> list[SamplingParams]:
    """The SamplingParams of every request the server submits to the engine, in order."""
    seen: list[SamplingParams] = []
    real_submit = engine.submit

    def spy(prompt, params=None, request_id=None):
        seen.append(params)
        return real_submit(prompt, params, request_id)

    monkeypatch.setattr(engine, "submit", spy)
    return seen


def test_request_without_temperature_samples_at_the_checkpoint_temperature(checkpoint_dir, monkeypatch):
    app = build_app(checkpoint_dir, ServeConfig())  # generation_config.json says temperature 0.7
    engine = app.state.trellis.engine
    seen = _record_submitted_params(engine, monkeypatch)
    try:
        with _client(app) as tc:
            assert tc.post("/v1/completions", json={"prompt": "All:", "max_tokens": 2}).status_code == 200
            assert (
                tc.post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
                ).status_code
                == 200
            )
            body = {"prompt": "All:", "max_tokens": 2, "temperature": 0}
            assert tc.post("/v1/completions", json=body).status_code == 200
        assert [p.temperature for p in seen] == [pytest.approx(0.7), pytest.approx(0.7), 0.0]
    finally:
        engine.shutdown()


def test_checkpoint_without_temperature_defaults_to_1(checkpoint_dir, tmp_path):
    import json
    import shutil

    from trellis.serving.server import read_default_temperature

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, d)
    gen = json.loads((d / "generation_config.json").read_text())
    gen.pop("temperature")
    (d / "generation_config.json").write_text(json.dumps(gen))
    assert read_default_temperature(d) == 1.0
    (d / "generation_config.json").write_text("{not json")
    from trellis.errors import TrellisError

    with pytest.raises(TrellisError, match="generation_config.json"):
        read_default_temperature(d)


def test_openapi_schema_documents_the_endpoints(engine, tokenizer):
    with _client(create_app(engine, tokenizer, MODEL)) as tc:
        schema = tc.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"):
        assert path in paths
    body = paths["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "prompt" in body["required"] and "temperature" in body["properties"]
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in chat["required"]


def test_oversized_body_gets_413(engine, tokenizer):
    app = create_app(engine, tokenizer, MODEL, ServeConfig(max_request_bytes=200))
    with _client(app) as tc:
        r = tc.post("/v1/completions", json={"prompt": "x" * 300, "max_tokens": 2})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert tc.post("/v1/completions", json={"prompt": "All:", "max_tokens": 2}).status_code == 200


def test_slow_generation_times_out_with_504_and_is_cancelled(engine, tokenizer):
    app = create_app(engine, tokenizer, MODEL, ServeConfig(request_timeout_s=0.05, max_tokens_limit=5000))
    body = {"prompt": "All:", "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    with _client(app) as tc:
        r = tc.post("/v1/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        deadline = time.monotonic() + 10
        while engine.num_running and time.monotonic() < deadline:  # the abandoned request is dropped
            time.sleep(0.01)
        assert engine.num_running == 0


def test_engine_shut_down_answers_503(engine, tokenizer):
    with _client(create_app(engine, tokenizer, MODEL)) as tc:
        engine.shutdown()
        r = tc.post("/v1/completions", json={"prompt": "All:", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert tc.get("/health").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(engine, tokenizer, live_server):
    server = live_server(create_app(engine, tokenizer, MODEL, ServeConfig(max_tokens_limit=512)))
    want = engine.generate(["All:"], SamplingParams(temperature=0, max_tokens=150, ignore_eos=True))[0]
    got: dict = {}

    def ask():
        body = {"prompt": "All:", "max_tokens": 150, "ignore_eos": True, "temperature": 0}
        got["r"] = httpx.post(server.url + "/v1/completions", json=body, timeout=60)

    t = threading.Thread(target=ask)
    t.start()
    deadline = time.monotonic() + 20
    while engine.num_running == 0:  # wait until the request is generating
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server.stop()  # as on SIGTERM
    t.join(30)
    assert got["r"].status_code == 200
    assert got["r"].json()["choices"][0]["text"] == want.text
    with pytest.raises(httpx.ConnectError):  # and no new connections after it
        httpx.get(server.url + "/health", timeout=2)


def test_request_without_top_p_uses_the_checkpoint_top_p(checkpoint_dir, tmp_path, monkeypatch):
    import json
    import shutil

    from trellis.serving.server import read_default_top_p

    d = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir, d)
    assert read_default_top_p(d) == 1.0  # the fixture's generation_config sets none
    gen = json.loads((d / "generation_config.json").read_text())
    (d / "generation_config.json").write_text(json.dumps({**gen, "top_p": 0.9}))
    assert read_default_top_p(d) == pytest.approx(0.9)
    app = build_app(d, ServeConfig())
    engine = app.state.trellis.engine
    seen = _record_submitted_params(engine, monkeypatch)
    try:
        with _client(app) as tc:
            assert tc.post("/v1/completions", json={"prompt": "All:", "max_tokens": 2}).status_code == 200
            body = {"prompt": "All:", "max_tokens": 2, "top_p": 0.5}
            assert tc.post("/v1/completions", json=body).status_code == 200
        assert [p.top_p for p in seen] == [pytest.approx(0.9), 0.5]
    finally:
        engine.shutdown()
