"""Train a byte-level BPE tokenizer with Trellis's ChatML special tokens.

Byte-level means every string round-trips exactly (no unknown token), and the special tokens come
first so their ids are the same in every tokenizer Trellis trains: <|endoftext|>=0, <|im_start|>=1,
<|im_end|>=2, <|pad|>=3.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from trellis.data.chat_template import CHATML_TEMPLATE, END_OF_TEXT, IM_END, IM_START, PAD, SPECIAL_TOKENS
from trellis.errors import TrellisError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# 256 byte symbols plus the special tokens: anything smaller cannot hold a byte-level vocabulary
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE of at most `vocab_size` tokens, ready for `save_pretrained` and chat templates."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise TrellisError(f"tokenizer.vocab_size: {vocab_size} is below the byte-level minimum {MIN_VOCAB_SIZE}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # untrimmed offsets keep character spans exact, which the assistant-token mask is computed from
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[END_OF_TEXT, IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def ensure_chatml(tokenizer):
    """Give a tokenizer from elsewhere the ChatML tokens and template Trellis relies on, where it lacks them.

    New tokens get ids past the end of the vocabulary (the model is sized from len(tokenizer)); an
    existing chat template is kept, and eos becomes <|im_end|> only when the ChatML template is installed.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = PAD
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
        tokenizer.eos_token = IM_END
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids of the ChatML special tokens; fails naming the first one the tokenizer lacks."""
    ids = {}
    for name, token in (("endoftext", END_OF_TEXT), ("im_start", IM_START), ("im_end", IM_END), ("pad", PAD)):
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == tokenizer.unk_token_id:
            raise TrellisError(f"tokenizer has no {token} token (Trellis needs the ChatML special tokens)")
        ids[name] = int(tid)
    return ids
