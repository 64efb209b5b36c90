"""`trellis reward`: a pairwise (Bradley-Terry) reward model (TRL RewardTrainer).

`model` null in a pipeline means the SFT stage's final checkpoint; `data` "world" means the world's
comparison pairs on three axes. `data` may also be one pair file or a list of sources, each tagged
with the axis its pairs rate (hh-rlhf helpful-base -> helpfulness, harmless-base -> harmlessness).

`heads` set: one score head per axis on one backbone; each pair trains its own axis's head, and
`combine` turns the heads into the one scalar PPO maximises. With `separate_models` each axis instead gets
a whole reward model of its own, trained on that axis's pairs alone, and `combine` joins their scores.
"""

import re
from typing import Literal

from pydantic import Field, model_validator

from trellis.config.base import HFTrainerSection, Section

_AXIS_DIR_NAME = re.compile(r"[A-Za-z0-9_-]+")


class PairSource(Section):
    path: str
    # the axis these pairs rate; overrides an "axis" field inside the file
    axis: str | None = None
    # keep only the first N pairs of this file (null: all)
    limit: int | None = None


class HarmConstraint(Section):
    """combined = weighted sum if reward[axis] > threshold else penalty (a safety floor, not a trade-off)."""

    axis: str = "harmlessness"
    threshold: float = 0.0
    penalty: float = -5.0
    # set, the threshold is fitted after training: this quantile of the axis's scores on the held-out
    # preferred answers of that axis's pairs (0.1: the penalty falls on answers less harmless than 90% of
    # the preferred ones). Centred rewards put a threshold of 0 at the median: half of all answers penalised
    threshold_quantile: float | None = Field(None, gt=0.0, lt=1.0)


class RewardCombination(Section):
    # weight of each head in the combined reward; a head left out weighs 0. Empty: every head weighs 1.
    weights: dict[str, float] = {}
    constraint: HarmConstraint | None = None


class RewardConfig(HFTrainerSection):
    data: str | list[PairSource] = "world"
    epochs: float = 2.0
    lr: float = 5e-4
    # pulls mean rewards toward 0 (Eisenstein et al. 2023) so PPO sees centred scores; null turns it off
    center_rewards_coefficient: float | None = 0.01
    heldout_fraction: float = 0.1
    # Bradley-Terry with a margin: loss = -log sigmoid(r_chosen - r_rejected - margin) for every pair
    margin: float = 0.0
    # null: one head for every pair (the scalar PPO uses); a list of axes: one head each
    heads: list[str] | None = None
    combine: RewardCombination = RewardCombination()
    # one reward model per axis in `heads` instead of one head each on a shared backbone (no interference
    # between axes, at the cost of a backbone per axis); epochs and max_steps apply to each model
    separate_models: bool = False
    # what happens to a pair longer than max_length: "drop" it, or "truncate" the prompt from the left
    over_length: Literal["drop", "truncate"] = "drop"
    # add alpha x the mean log-probability of the answer's tokens under the model's own backbone (through
    # its tied embeddings) to the score head's reward (trellis.reward.likelihood): the head then reads what
    # the model knows. One head only; needs tied embeddings. alpha starts at likelihood_alpha and trains at
    # `lr` with the rest, so in short runs it stays near its start (1.0 -> 1.004 in the quickstart)
    likelihood_term: bool = False
    likelihood_alpha: float = 1.0

    @model_validator(mode="after")
    def _combination_names_heads(self) -> "RewardConfig":
        if self.likelihood_term and self.heads is not None:
            raise ValueError("likelihood_term: applies to a one-head reward model (heads is set)")
        if self.heads is None:
            if self.separate_models:
                raise ValueError("separate_models: needs `heads`, the axes to train one model each for")
            return self
        if not self.heads or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads: expected distinct axis names, got {self.heads}")
        named = set(self.combine.weights) | ({self.combine.constraint.axis} if self.combine.constraint else set())
        unknown = sorted(named - set(self.heads))
        if unknown:
            raise ValueError(f"combine names {unknown}, which are not among heads {self.heads}")
        # each separate model is saved in a subdirectory named after its axis
        unsafe = [h for h in self.heads if not _AXIS_DIR_NAME.fullmatch(h)]
        if self.separate_models and unsafe:
            raise ValueError(f"heads: {unsafe} cannot name a directory (separate_models saves one model per "
                             "axis under the axis's name: use letters, digits, '_' and '-')")
        return self
