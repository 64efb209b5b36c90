"""Tiny models for serving tests: a byte-level BPE with the ChatML template and a random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus/tinyshakespeare.txt"
FALLBACK_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from trellis.data.chat_template import CHATML_TEMPLATE, END_OF_TEXT, IM_END, PAD, SPECIAL_TOKENS

    text = CORPUS.read_text()[:8000] if CORPUS.exists() else FALLBACK_TEXT
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        bos_token=END_OF_TEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (IM_END, PAD, END_OF_TEXT)],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_model(vocab_size: int, eos_ids: list[int], pad_id: int, seed: int = 0):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=vocab_size,
        max_position_embeddings=256,
        # a wider init than the default 0.02 gives peaked logits, so float noise never flips an argmax
        initializer_range=0.2,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    from trellis.data.chat_template import END_OF_TEXT, IM_END

    eos = [tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
    return build_model(len(tokenizer), eos, tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, model, tokenizer):
    import json

    d = tmp_path_factory.mktemp("tiny-ckpt")
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    # the server's default temperature comes from here
    gen = json.loads((d / "generation_config.json").read_text())
    gen.update(temperature=0.7, do_sample=True)
    (d / "generation_config.json").write_text(json.dumps(gen))
    return d


class LiveServer:
    """An app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        import socket
        import threading
        import time

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self, timeout: float = 20.0) -> None:
        """What SIGTERM does: stop accepting, let in-flight requests finish, return."""
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


@pytest.fixture
def live_server():
    started: list[LiveServer] = []

    def start(app) -> LiveServer:
        s = LiveServer(app)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.thread.is_alive():
            s.stop()
