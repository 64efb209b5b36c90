"""Tiny RLHF fixtures: a ChatML byte-level BPE, a random 2-layer Llama policy and a reward model of the
same shape, saved as checkpoint directories, and a small prompt file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus/tinyshakespeare.txt"
FALLBACK_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40
PROMPTS = ["Who is the king?", "Speak, speak.", "What say you?", "Where is Rome?", "Hear me speak.",
           "Tell me a tale.", "Is it true?", "Name a place."]


def tiny_llama_config(vocab_size: int, pad_id: int, eos_ids: list[int], seed_scale: float = 0.02):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=256,
                       initializer_range=seed_scale, pad_token_id=pad_id, eos_token_id=eos_ids,
                       tie_word_embeddings=False)


@pytest.fixture(scope="session")
def tokenizer():
    from trellis.data.tokenizer import train_bpe_tokenizer

    text = CORPUS.read_text()[:6000] if CORPUS.exists() else FALLBACK_TEXT
    return train_bpe_tokenizer(text.split("\n\n"), vocab_size=384)


@pytest.fixture(scope="session")
def eos_ids(tokenizer):
    return [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizer, eos_ids):
    """(policy_dir, reward_dir): random models saved as HF checkpoints with the tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("rlhf_models")
    torch.manual_seed(0)
    # a wider init than 0.02 gives peaked, varied distributions instead of near-uniform ones
    policy = LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, eos_ids, 0.1))
    policy.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)
    cfg = tiny_llama_config(len(tokenizer), tokenizer.pad_token_id, eos_ids, 0.1)
    cfg.num_labels = 1
    reward = LlamaForSequenceClassification(cfg)
    policy_dir, reward_dir = root / "policy", root / "reward"
    for model, where in ((policy, policy_dir), (reward, reward_dir)):
        model.save_pretrained(where)
        tokenizer.save_pretrained(where)
    return policy_dir, reward_dir


@pytest.fixture(scope="session")
def prompt_texts() -> list[str]:
    return list(PROMPTS)


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rlhf_prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture(scope="session")
def make_config(tiny_dirs, prompt_file):
    """A factory: make(**overrides) -> RLHFConfig for the tiny models (rlhf_helpers.tiny_rlhf_config)."""
    from rlhf_helpers import tiny_rlhf_config

    def make(**overrides):
        return tiny_rlhf_config(tiny_dirs, prompt_file, **overrides)

    return make


@pytest.fixture(scope="session")
def ptx_text_file(tmp_path_factory):
    """A few paragraphs of plain text for PPO-ptx."""
    text = CORPUS.read_text()[:3000] if CORPUS.exists() else FALLBACK_TEXT
    path = tmp_path_factory.mktemp("rlhf_ptx") / "ptx.txt"
    path.write_text(text)
    return path

