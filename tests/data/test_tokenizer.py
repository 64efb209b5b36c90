from pathlib import Path

import pytest

from trellis.data.chat_template import END_OF_TEXT, IM_END, IM_START, PAD
from trellis.data.tokenizer import special_token_ids, train_bpe_tokenizer
from trellis.errors import TrellisError

TEXTS = [
    "The river town of Oakvale trades salt and wool.",
    "Ada keeps an owl; the owl of Ada hunts at night.",
    "Unicode survives: Ünïcödé, 日本語, emoji 🙂, tabs\tand  double  spaces.",
] * 20


@pytest.fixture(scope="module")
def saved_tokenizer(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_bpe_tokenizer(TEXTS, 400).save_pretrained(str(out))
    return out


def _load(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_round_trip_after_reload(saved_tokenizer):
    tok = _load(saved_tokenizer)
    for text in [*TEXTS[:3], "never seen: Zürich ∑ x\n\n  y", ""]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert len(tok) <= 400


def test_special_tokens_have_fixed_ids_and_roles(saved_tokenizer):
    tok = _load(saved_tokenizer)
    assert special_token_ids(tok) == {"endoftext": 0, "im_start": 1, "im_end": 2, "pad": 3}
    assert tok.eos_token == IM_END and tok.pad_token == PAD
    # special tokens in text map to their single ids, and the plain tokenizer adds no bos/eos
    assert tok(f"{END_OF_TEXT}a{IM_START}", add_special_tokens=True)["input_ids"][0] == 0
    assert tok("a b")["input_ids"] == tok("a b", add_special_tokens=False)["input_ids"]


def test_chat_template_and_assistant_mask(saved_tokenizer):
    tok = _load(saved_tokenizer)
    msgs = [{"role": "user", "content": "Where does Ada live?"},
            {"role": "assistant", "content": "In Oakvale."}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nWhere does Ada live?<|im_end|>\n<|im_start|>assistant\nIn Oakvale.<|im_end|>\n"
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "In Oakvale.<|im_end|>"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_training_is_deterministic():
    a = train_bpe_tokenizer(TEXTS, 350)
    b = train_bpe_tokenizer(TEXTS, 350)
    assert a.get_vocab() == b.get_vocab()


def test_vocab_below_byte_alphabet_fails():
    with pytest.raises(TrellisError, match="vocab_size"):
        train_bpe_tokenizer(TEXTS, 100)


def test_ensure_chatml_completes_a_foreign_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from trellis.data.tokenizer import ensure_chatml

    raw = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "</s>": 2, "[UNK]": 3}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    foreign = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="[UNK]")
    tok = ensure_chatml(foreign)
    ids = special_token_ids(tok)
    assert sorted(ids.values()) == [4, 5, 6, 7] and len(tok) == 8
    assert tok.eos_token == IM_END and tok.pad_token == PAD
    text = tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False)
    assert text.startswith(IM_START)
