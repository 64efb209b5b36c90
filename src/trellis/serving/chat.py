"""`trellis chat`: a terminal chat loop over the engine, with streamed replies and a history.

Commands: /reset forgets the conversation, /exit (or end of input) leaves.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from trellis.serving.sampling import SamplingParams

HELP = "Type a message. Commands: /reset (forget the conversation), /exit (leave)."


def chat(
    checkpoint_dir: str | Path,
    temperature: float | None = None,
    top_p: float = 0.9,
    max_tokens: int = 128,
    system: str | None = None,
    device: str = "auto",
    input_fn: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict[str, str]]:
    """Load a checkpoint and chat; returns the final conversation. Temperature defaults to the checkpoint's."""
    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.device import resolve_device
    from trellis.serving.engine import Engine
    from trellis.serving.server import read_default_temperature

    tokenizer = load_tokenizer(checkpoint_dir)
    model = load_causal_lm(checkpoint_dir, device=resolve_device(device))
    if temperature is None:
        temperature = read_default_temperature(checkpoint_dir)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    engine = Engine(model, tokenizer, max_batch_size=1)
    try:
        return chat_loop(engine, params, system=system, input_fn=input_fn, out=out)
    finally:
        engine.shutdown()


def chat_loop(
    engine: Any,
    params: SamplingParams,
    system: str | None = None,
    input_fn: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[dict[str, str]]:
    out = out or sys.stdout
    start: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    history = list(start)
    print(HELP, file=out, flush=True)
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out, flush=True)
            return history
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return history
        if text == "/reset":
            history = list(start)
            print("(conversation reset)", file=out, flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text}. {HELP}", file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        handle = engine.submit(engine.chat_prompt_ids(history), params)
        print("assistant> ", end="", file=out, flush=True)
        try:
            for delta in handle:
                print(delta.text, end="", file=out, flush=True)
        except KeyboardInterrupt:  # stop this reply, keep the session
            handle.cancel()
            handle.result()
        reply = handle.result().text
        print(file=out, flush=True)
        history.append({"role": "assistant", "content": reply})
