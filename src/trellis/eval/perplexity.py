"""Perplexity and bits per byte of a causal LM over named sets of documents.

Every document is scored on its own, each token once: a document longer than the model's context is cut
into windows of `max_length` tokens that advance by `stride` tokens, and a window scores only the
tokens the previous one did not, seeing up to `max_length - stride` earlier tokens as context
(stride == max_length: non-overlapping windows; smaller strides: rolling windows, slower, lower ppl).
The first token of a document is predicted from a prefix token (bos, else <|endoftext|>, which Trellis
packing puts between pretraining documents, else eos), so every token of the text counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def load_text_set(source: str | Path | Sequence[str]) -> list[str]:
    """A list of documents as given, or a text file read as one document."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise TrellisError(f"{path}: perplexity text file not found")
        return [path.read_text(encoding="utf-8")]
    return [str(d) for d in source]


def prefix_token_id(tokenizer: Any) -> int:
    if tokenizer.bos_token_id is not None:
        return int(tokenizer.bos_token_id)
    tid = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else None
    if tid is not None:
        return int(tid)
    if tokenizer.eos_token_id is None:
        raise TrellisError("perplexity: tokenizer has no bos, <|endoftext|> or eos token to start documents")
    return int(tokenizer.eos_token_id)


def model_max_length(model: Any, default: int = 2048) -> int:
    cfg = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(cfg, attr, None)
        if value:
            return int(value)
    return default


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, new) windows over a document of `n_tokens` ids (prefix token first).

    The model reads ids[begin:end] and predicts ids[begin+1:end+1]; the last `new` of those targets are
    scored, so every id after the prefix is scored exactly once.
    """
    out = []
    targets = n_tokens - 1
    scored = 0
    while scored < targets:
        end = min(scored + stride, targets)
        begin = max(0, end - max_length)
        out.append((begin, end, end - scored))
        scored = end
    return out


def perplexity(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int | None = None,
               stride: int | None = None, batch_tokens: int = 8192, prefix_id: int | None = None) -> dict[str, Any]:
    """{"ppl", "bits_per_byte", "nll_per_token", "tokens", "bytes", "documents"} of `texts`.

    A forward pass takes as many windows as fit `batch_tokens` (rows x the longest window; at least one
    row): the logits of a pass are batch_tokens x vocabulary floats, so the budget, not a row count, bounds
    memory whatever the window length (32 rows of 8192 tokens would be 50 GB of logits for SmolLM2)."""
    if batch_tokens < 1:
        raise TrellisError(f"perplexity: batch_tokens must be >= 1, got {batch_tokens}")
    import torch
    import torch.nn.functional as F

    max_length = int(max_length or model_max_length(model))
    stride = int(stride or max_length)
    if not 0 < stride <= max_length:
        raise TrellisError(f"perplexity: stride {stride} must be in [1, max_length={max_length}]")
    start = prefix_token_id(tokenizer) if prefix_id is None else prefix_id
    jobs: list[tuple[list[int], list[int]]] = []  # (input ids, target ids with -100 on unscored positions)
    n_bytes = 0
    for text in texts:
        if not text:
            continue
        n_bytes += len(text.encode("utf-8"))
        ids = [start] + list(tokenizer(text, add_special_tokens=False)["input_ids"])
        for begin, end, new in windows(len(ids), max_length, stride):
            targets = ids[begin + 1:end + 1]
            jobs.append((ids[begin:end], [-100] * (len(targets) - new) + targets[-new:]))
    jobs.sort(key=lambda job: -len(job[0]))
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            i = 0
            while i < len(jobs):
                width = len(jobs[i][0])  # longest first: the first window of a batch sets its width
                batch = jobs[i:i + max(1, batch_tokens // width)]
                i += len(batch)
                inputs = torch.zeros(len(batch), width, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros(len(batch), width, dtype=torch.long)
                for row, (inp, tgt) in enumerate(batch):
                    inputs[row, :len(inp)] = torch.tensor(inp)
                    labels[row, :len(tgt)] = torch.tensor(tgt)
                    mask[row, :len(inp)] = 1
                logits = model(input_ids=inputs.to(device), attention_mask=mask.to(device)).logits.float()
                nll = F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=-100,
                                      reduction="sum")
                total_nll += float(nll)
                total_tokens += int((labels != -100).sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise TrellisError("perplexity: no text to score (every document is empty)")
    nll_per_token = total_nll / total_tokens
    return {
        "ppl": math.exp(nll_per_token),
        "bits_per_byte": total_nll / math.log(2) / n_bytes,
        "nll_per_token": nll_per_token,
        "tokens": total_tokens,
        "bytes": n_bytes,
        "documents": sum(1 for t in texts if t),
    }


def perplexity_sets(model: Any, tokenizer: Any, sets: dict[str, str | Path | Sequence[str]],
                    **kwargs: Any) -> dict[str, dict[str, Any]]:
    """perplexity() of each named set: {name: {"ppl", "bits_per_byte", ...}}."""
    return {name: perplexity(model, tokenizer, load_text_set(source), **kwargs) for name, source in sets.items()}
