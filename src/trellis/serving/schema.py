"""Request bodies of the OpenAI-compatible endpoints, for the server's OpenAPI schema (/openapi.json).

The handlers parse bodies by hand (so that every failure is an OpenAI-style error, not FastAPI's 422);
these models only document what they accept.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="must be the served model's id when given")
    max_tokens: int | None = Field(None, ge=1, description="at most the server's max_tokens_limit")
    temperature: float | None = Field(
        None, ge=0, le=2, description="0 = greedy; default: the checkpoint's generation_config temperature"
    )
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling mass")
    top_k: int | None = Field(None, ge=0, description="0 = off")
    min_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16, description="completions per prompt")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings")
    stop_token_ids: list[int] | None = None
    seed: int | None = Field(None, description="completion i of a request samples with seed + i")
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    ignore_eos: bool | None = None
    stream: bool | None = Field(None, description="server-sent events in OpenAI's chunk format")
    stream_options: dict[str, Any] | None = Field(None, description='{"include_usage": true}')


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="text, token ids, or a list of either (at most 64 prompts)"
    )
    logprobs: int | None = Field(None, ge=0, le=5, description="log-probs of the top alternatives")


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(
        ..., description="[{role: system|user|assistant|developer|tool, content: str | text parts}]"
    )
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose JSON body is `model`."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
