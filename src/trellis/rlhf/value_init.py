"""The critic initialised from a reward checkpoint.

A multi-head reward model's combined score need not be differentiable in its inputs: a harmlessness
constraint swaps in a constant penalty, whose gradient is zero, so a critic reading that head would get
no training signal wherever the constraint fails. The critic instead gets one linear output, the
weighted sum of the per-axis heads (the combination without its constraint), and a config that reads as
a single-head model so a saved critic reloads as one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_value_model(path: str | Path, device: Any = "cpu") -> Any:
    import torch

    from trellis.checkpoint import load_reward_model
    from trellis.reward.ensemble import RewardEnsemble
    from trellis.reward.heads import COMBINATION_KEY, CombinedScoreHead

    model = load_reward_model(path, device=device)
    if isinstance(model, RewardEnsemble):  # one model per axis: their weighted sum, without the constraint
        return model.without_constraint()
    score = getattr(model, "score", None)
    if not isinstance(score, CombinedScoreHead):
        return model
    spec = score.spec
    weights = score.weight.new_tensor([spec["weights"][axis] for axis in spec["heads"]])
    single = torch.nn.Linear(score.in_features, 1, bias=score.bias is not None, device=score.weight.device,
                             dtype=score.weight.dtype)
    with torch.no_grad():
        single.weight.copy_(weights @ score.weight)
        if score.bias is not None:
            single.bias.copy_(weights @ score.bias)
    model.score = single
    model.config.num_labels = 1
    setattr(model.config, COMBINATION_KEY, None)
    return model
