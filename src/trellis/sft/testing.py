"""A tiny random chat checkpoint (Llama, ChatML byte-level BPE) for fast tests of the stages after pretrain."""

from __future__ import annotations

from pathlib import Path

from trellis.data.chat_template import END_OF_TEXT, IM_END

SEED_TEXT = (
    "The quick brown fox jumps over the lazy dog. A capital city is where a country keeps its government. "
    "Paris is the capital of France; Rome is the capital of Italy. Answer politely and honestly. "
    "I cannot help with that request because it could hurt someone. Yes. No. Maybe. Thank you! "
    "What is the colour of the sky? The sky is blue. How many legs does a cat have? A cat has four legs. "
)


def build_tiny_chat_checkpoint(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 512,
                               hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random LlamaForCausalLM (hidden 64, 2 layers) plus a trained ChatML tokenizer to `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from trellis.data.tokenizer import train_bpe_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = list(texts or []) + [SEED_TEXT] * 4
    tokenizer = train_bpe_tokenizer(corpus, vocab_size=vocab_size)
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=vocab[END_OF_TEXT], eos_token_id=vocab[IM_END], pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[vocab[IM_END], vocab[END_OF_TEXT]],
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
