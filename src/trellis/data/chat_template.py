"""ChatML, the chat format of tokenizers that Trellis trains itself.

The `{% generation %}` markers let TRL's SFTTrainer put the loss on assistant tokens only.
"""

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [END_OF_TEXT, IM_START, IM_END, PAD]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_stop_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: <|im_end|> and <|endoftext|> when the vocabulary has them,
    then the tokenizer's own eos (what every checkpoint's generation_config lists)."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in (IM_END, END_OF_TEXT) if t in vocab]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
