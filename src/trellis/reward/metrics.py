"""Reward-model diagnostics on held-out pairs: per-axis accuracy, the margin distribution, length bias and
the calibration of P(chosen) = sigmoid(r_chosen - r_rejected)."""

from __future__ import annotations

import math
from typing import Any

from trellis.tensors import right_pad

CALIBRATION_BINS = 5  # confidence 0.5-1.0 in steps of 0.1: enough pairs per bin on a few hundred held out


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


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def margin_distribution(margins: list[float]) -> dict[str, float] | None:
    """Spread of r_chosen - r_rejected: a wide negative tail means confidently wrong pairs."""
    if not margins:
        return None
    s = sorted(margins)
    n = len(s)
    mean = sum(s) / n
    return {"mean": mean, "std": math.sqrt(sum((m - mean) ** 2 for m in s) / n), "min": s[0],
            "p10": _quantile(s, 0.1), "p25": _quantile(s, 0.25), "median": _quantile(s, 0.5),
            "p75": _quantile(s, 0.75), "p90": _quantile(s, 0.9), "max": s[-1],
            "negative_fraction": sum(m < 0 for m in s) / n}


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def calibration(margins: list[float], bins: int = CALIBRATION_BINS) -> dict[str, Any] | None:
    """How well P(chosen) = sigmoid(margin) matches how often the model is right.

    Every held-out pair was observed as "chosen preferred", so the model's prediction for a pair is the side
    it favours, with confidence max(p, 1 - p); a calibrated model is right in that fraction of pairs. Bins
    of confidence give the reliability table; ECE is their size-weighted gap; log loss and Brier score are
    the usual proper scores of p against the observed label 1.
    """
    if not margins:
        return None
    p = [_sigmoid(m) for m in margins]
    n = len(p)
    table = []
    ece = 0.0
    for b in range(bins):
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        members = [pi for pi in p if lo <= max(pi, 1 - pi) < hi or (b == bins - 1 and max(pi, 1 - pi) >= hi)]
        if not members:
            continue
        confidence = sum(max(pi, 1 - pi) for pi in members) / len(members)
        accuracy = sum(pi > 0.5 for pi in members) / len(members)
        ece += len(members) / n * abs(accuracy - confidence)
        table.append({"bin": [round(lo, 3), round(hi, 3)], "pairs": len(members), "confidence": confidence,
                      "accuracy": accuracy})
    return {"ece": ece, "log_loss": sum(-math.log(max(pi, 1e-12)) for pi in p) / n,
            "brier": sum((1 - pi) ** 2 for pi in p) / n, "p_chosen_mean": sum(p) / n, "bins": table}


def pairwise_metrics(chosen: list[float], rejected: list[float], axes: list[str | None],
                     chosen_lengths: list[int], rejected_lengths: list[int]) -> dict[str, Any]:
    """accuracy {axis..., "overall"}, the margin's mean and distribution, calibration, and length bias.

    A reward model that mostly rewards length shows a high `length_correlation` (reward vs. response
    tokens over every scored answer), a positive `length_margin_correlation` (margin vs. how much longer
    the chosen answer is) and an accuracy close to `longer_chosen_rate` (how often simply picking the
    longer answer would be right).
    """
    n = len(chosen)
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    by_axis: dict[str, list[int]] = {}
    for i, axis in enumerate(axes):
        if axis is not None:
            by_axis.setdefault(axis, []).append(i)
    accuracy = {axis: sum(wins[i] for i in idx) / len(idx) for axis, idx in sorted(by_axis.items())}
    accuracy["overall"] = sum(wins) / n if n else None
    longer = [cl > rl for cl, rl in zip(chosen_lengths, rejected_lengths, strict=True)]
    length_diff = [float(cl - rl) for cl, rl in zip(chosen_lengths, rejected_lengths, strict=True)]
    return {
        "accuracy": accuracy,
        "pairs": {axis: len(idx) for axis, idx in sorted(by_axis.items())} | {"overall": n},
        "margin_mean": sum(margins) / n if n else None,
        "margin": margin_distribution(margins),
        "margin_by_axis": {axis: margin_distribution([margins[i] for i in idx])
                           for axis, idx in sorted(by_axis.items())},
        "calibration": calibration(margins),
        "calibration_ece_by_axis": {axis: calibration([margins[i] for i in idx])["ece"]  # type: ignore[index]
                                    for axis, idx in sorted(by_axis.items())},
        "reward_chosen_mean": sum(chosen) / n if n else None,
        "reward_rejected_mean": sum(rejected) / n if n else None,
        "length_correlation": pearson([float(x) for x in chosen_lengths + rejected_lengths], chosen + rejected),
        "length_margin_correlation": pearson(length_diff, margins),
        "longer_chosen_rate": sum(longer) / n if n else None,
    }


def score_token_ids(model: Any, sequences: list[list[int]], pad_token_id: int, batch_size: int = 32
                    ) -> list[list[float]]:
    """Every reward output (one per head) of each token sequence, right-padded; the model reads the last
    non-pad token."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rewards: list[list[float]] = []
    try:
        for start in range(0, len(sequences), batch_size):
            ids, mask = right_pad(sequences[start : start + batch_size], pad_token_id)
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            rewards.extend(row.tolist() for row in logits.float().cpu())
    finally:
        model.train(was_training)
    return rewards
