"""Score held-out pairs with a reward model (single- or multi-head) and compute the diagnostics."""

from __future__ import annotations

from typing import Any

from trellis.reward.metrics import pairwise_metrics, score_token_ids


def _metrics(chosen: list[float], rejected: list[float], rows: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = pairwise_metrics(chosen, rejected, [r["axis"] for r in rows],
                               [r["chosen_len"] for r in rows], [r["rejected_len"] for r in rows])
    if any(r["kind"] for r in rows):  # world pairs: which kinds of question the model gets wrong
        groups = [f"{r['axis']}/{r['kind']}" for r in rows]
        metrics["accuracy_by_kind"] = pairwise_metrics(chosen, rejected, groups, [0] * len(rows),
                                                       [0] * len(rows))["accuracy"]
    return metrics


def evaluate_pairs(model: Any, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int = 32,
                   spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Diagnostics of the reward the model gives each pair (see pair_diagnostics)."""
    chosen_all = score_token_ids(model, [r["chosen_ids"] for r in rows], pad_token_id, batch_size)
    rejected_all = score_token_ids(model, [r["rejected_ids"] for r in rows], pad_token_id, batch_size)
    return pair_diagnostics(chosen_all, rejected_all, rows, spec)


def pair_diagnostics(chosen_all: list[list[float]], rejected_all: list[list[float]], rows: list[dict[str, Any]],
                     spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Diagnostics from every reward output of each pair's two answers ([pairs][outputs]).

    Single head (spec None): its one output. Per-axis rewards (spec from trellis.reward.heads; the heads of
    one model or the separate models of an ensemble): every pair is judged by its own axis's reward, and
    `combined` holds the same diagnostics for the combined scalar PPO optimises (does the combination
    still prefer the chosen answer on every axis?).
    """
    if spec is None:
        return _metrics([c[0] for c in chosen_all], [r[0] for r in rejected_all], rows)

    import torch

    from trellis.reward.heads import combine_rewards

    heads = spec["heads"]
    own = [heads.index(r["axis"]) for r in rows]
    metrics = _metrics([c[h] for c, h in zip(chosen_all, own, strict=True)],
                       [r[h] for r, h in zip(rejected_all, own, strict=True)], rows)
    combined_chosen = combine_rewards(torch.tensor(chosen_all), spec).tolist()
    combined_rejected = combine_rewards(torch.tensor(rejected_all), spec).tolist()
    combined = _metrics(combined_chosen, combined_rejected, rows)
    metrics["combined"] = {k: combined[k] for k in ("accuracy", "margin_mean", "margin", "calibration",
                                                     "length_correlation", "reward_chosen_mean",
                                                     "reward_rejected_mean")}
    return metrics
