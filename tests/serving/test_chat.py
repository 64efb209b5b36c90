"""The terminal chat loop, driven through stdin."""

from __future__ import annotations

import io
import sys

from trellis.serving.chat import chat


def test_chat_loop_keeps_history_resets_and_exits(checkpoint_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Speak.\nAgain.\n/reset\nHello\n/exit\nnever read\n"))
    out = io.StringIO()
    history = chat(checkpoint_dir, temperature=0, max_tokens=6, system="Be brief.", out=out)
    assert [m["role"] for m in history] == ["system", "user", "assistant"]
    assert history[1]["content"] == "Hello"
    text = out.getvalue()
    assert text.count("assistant> ") == 3
    assert "(conversation reset)" in text
    # the streamed reply is what was stored in the history
    assert history[2]["content"] in text


def test_chat_ends_at_end_of_input(checkpoint_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Speak.\n"))
    history = chat(checkpoint_dir, temperature=0, max_tokens=3, out=io.StringIO())
    assert [m["role"] for m in history] == ["user", "assistant"]
