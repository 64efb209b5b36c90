"""Reward-model diagnostics on held-out pairs: per-axis accuracy, margin, and length bias."""

from __future__ import annotations

import math
from typing import Any

from trellis.tensors import right_pad


def pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def pairwise_metrics(chosen: list[float], rejected: list[float], axes: list[str | None],
                     chosen_lengths: list[int], rejected_lengths: list[int]) -> dict[str, Any]:
    """accuracy {axis..., "overall"}, mean margin, and the correlation of reward with response length.

    A reward model that mostly rewards length shows a high `length_correlation` and an accuracy close to
    `longer_chosen_rate` (how often simply picking the longer answer would be right).
    """
    n = len(chosen)
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    by_axis: dict[str, list[bool]] = {}
    for axis, win in zip(axes, wins, strict=True):
        if axis is not None:
            by_axis.setdefault(axis, []).append(win)
    accuracy = {axis: sum(v) / len(v) for axis, v in sorted(by_axis.items())}
    accuracy["overall"] = sum(wins) / n if n else None
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    longer = [cl > rl for cl, rl in zip(chosen_lengths, rejected_lengths, strict=True)]
    return {
        "accuracy": accuracy,
        "pairs": {axis: len(v) for axis, v in sorted(by_axis.items())} | {"overall": n},
        "margin_mean": sum(margins) / n if n else None,
        "reward_chosen_mean": sum(chosen) / n if n else None,
        "reward_rejected_mean": sum(rejected) / n if n else None,
        "length_correlation": pearson([float(x) for x in chosen_lengths + rejected_lengths], chosen + rejected),
        "longer_chosen_rate": sum(longer) / n if n else None,
    }


def score_token_ids(model: Any, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """Scalar rewards of token sequences (right-padded; the model reads the last non-pad token)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rewards: list[float] = []
    try:
        for start in range(0, len(sequences), batch_size):
            ids, mask = right_pad(sequences[start : start + batch_size], pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            rewards.extend(float(x) for x in logits[:, 0].float().cpu())
    finally:
        model.train(was_training)
    return rewards
