"""Implicit DPO rewards of held-out pairs: beta * (log pi(answer | prompt) - log pi_ref(answer | prompt))."""

from __future__ import annotations

from typing import Any

from trellis.tensors import right_pad


def answer_token_ids(tokenizer: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]
                     ) -> tuple[list[int], int]:
    """(ids of prompt + answer, number of prompt tokens), rendered with the chat template."""
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)
    head_ids, full_ids = list(head["input_ids"]), list(full["input_ids"])
    if full_ids[: len(head_ids)] != head_ids:  # a template that renders the prompt differently with an answer
        raise ValueError("chat template renders the prompt differently once an answer follows it")
    return full_ids, len(head_ids)


def sequence_logps(model: Any, rows: list[tuple[list[int], int]], pad_token_id: int, batch_size: int = 16
                   ) -> list[float]:
    """Sum of the answer tokens' log-probs for each (ids, prompt_len)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            ids, mask = right_pad([r[0] for r in chunk], pad_token_id)
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
            positions = torch.arange(ids.shape[1] - 1, device=device)[None, :]
            starts = torch.tensor([r[1] - 1 for r in chunk], device=device)[:, None]
            answer = (positions >= starts) & (mask[:, 1:] > 0)
            out.extend((logp * answer).sum(1).tolist())
    finally:
        model.train(was_training)
    return out
