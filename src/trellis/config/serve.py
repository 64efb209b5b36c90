"""`trellis serve`: an OpenAI-compatible HTTP server over the generation engine."""

from pydantic import Field

from trellis.config.base import Section


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = 8000
    # required when binding to anything but loopback
    api_key: str | None = None
    model_name: str | None = None
    max_batch_size: int = 16
    max_queue: int = 64
    max_tokens_limit: int = 1024
    max_request_bytes: int = 1_000_000
    request_timeout_s: float = 120.0
    # prompt tokens computed per engine step (chunked prefill: running requests keep decoding between chunks)
    max_prefill_tokens: int = Field(512, ge=1)
    # memory for the keys/values of recent prompts, reused by prompts sharing a prefix (0: no prefix sharing)
    prefix_cache_mb: float = Field(256.0, ge=0.0)
    # key/value positions the running requests may reserve (prompt + max_tokens each), bounding KV memory;
    # null: only max_batch_size limits the running batch
    max_tokens_in_flight: int | None = Field(None, ge=1)
    # decode steps of Llama models through the engine's lean step (same logits, less host work per step)
    lean_decode: bool = True
    device: str = "auto"
