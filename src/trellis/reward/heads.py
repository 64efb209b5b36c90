"""Multi-objective reward heads: one score output per axis on one backbone, combined into one scalar.

A multi-head checkpoint is a plain Hugging Face sequence-classification model with num_labels = number of
axes (id2label names them), so transformers alone loads it and reads every axis's reward. Its config also
carries `trellis_reward_combination`; `trellis.checkpoint.load_reward_model` then swaps the score layer for
`CombinedScoreHead`, whose output is the single combined reward, so PPO (which applies `model.score` to the
backbone's hidden states, and reads `forward().logits[:, 0]`) runs unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMBINATION_KEY = "trellis_reward_combination"


def combination_spec(heads: list[str], combine: Any) -> dict[str, Any]:
    """The JSON stored in the checkpoint's config: which head is which axis and how they combine."""
    weights = dict(combine.weights) or {axis: 1.0 for axis in heads}
    spec: dict[str, Any] = {"heads": list(heads), "weights": {a: float(weights.get(a, 0.0)) for a in heads}}
    if combine.constraint is not None:
        spec["constraint"] = {"axis": combine.constraint.axis, "threshold": float(combine.constraint.threshold),
                              "penalty": float(combine.constraint.penalty)}
    return spec


def fit_constraint_threshold(spec: dict[str, Any] | None, quantile: float | None, chosen: list[list[float]],
                             rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """`spec` with its constraint threshold set to the `quantile` of the constraint head's scores on the
    preferred answers of the held-out pairs of that axis (`chosen`: per pair, every head's score)."""
    if spec is None or quantile is None or not spec.get("constraint"):
        return spec
    axis = spec["constraint"]["axis"]
    column = spec["heads"].index(axis)
    scores = [scores[column] for scores, row in zip(chosen, rows, strict=True) if row.get("axis") == axis]
    if not scores:
        from trellis.errors import TrellisError

        raise TrellisError(f"reward.combine.constraint.threshold_quantile: no held-out {axis} pairs to fit it on "
                           "(set reward.heldout_fraction above 0, or give a fixed threshold)")
    fitted = {**spec, "constraint": {**spec["constraint"],
                                     "threshold": float(torch.tensor(scores).quantile(quantile)),
                                     "threshold_quantile": quantile}}
    return fitted


def combine_rewards(per_axis: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """[..., heads] -> [...]: the weighted sum, replaced by the penalty where the constraint axis fails."""
    heads = spec["heads"]
    weights = per_axis.new_tensor([spec["weights"][a] for a in heads])
    combined = (per_axis * weights).sum(-1)
    constraint = spec.get("constraint")
    if constraint:
        guard = per_axis[..., heads.index(constraint["axis"])]
        combined = torch.where(guard > constraint["threshold"], combined,
                               combined.new_tensor(constraint["penalty"]))
    return combined


class CombinedScoreHead(nn.Linear):
    """The checkpoint's per-axis score layer (same weights, same state-dict keys), returning the combined
    reward as one output so the model reads like a single-head reward model."""

    def __init__(self, score: nn.Linear, spec: dict[str, Any]):
        super().__init__(score.in_features, score.out_features, bias=score.bias is not None,
                         device=score.weight.device, dtype=score.weight.dtype)
        self.load_state_dict(score.state_dict())
        self.spec = spec

    def per_axis(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return combine_rewards(self.per_axis(hidden), self.spec).unsqueeze(-1)


def attach_combined_head(model: Any) -> Any:
    """Give a multi-head checkpoint's model its combined head (in place); single-head models pass through."""
    spec = getattr(model.config, COMBINATION_KEY, None)
    score = getattr(model, "score", None)
    if not spec or not isinstance(score, nn.Linear) or isinstance(score, CombinedScoreHead):
        return model
    model.score = CombinedScoreHead(score, spec)
    return model
