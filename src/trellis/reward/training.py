"""What the reward stage passes between training one model and reporting on it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainingSlot:
    """Where one of several models trained in the same stage run keeps its state: the separate models
    each get their own checkpoints directory, metric-name prefix and a step offset, so the stage's
    curve runs on through every model."""

    labels: list[str] | None = None  # the score outputs' names (None: the stage's heads, or one "reward")
    checkpoints_dir: Path | None = None  # None: the stage's checkpoints/
    log_prefix: str = ""
    step_offset: int = 0


@dataclass
class PairScores:
    """Every reward output ([pairs][outputs]) of each held-out pair's chosen and rejected answer."""

    chosen: list[list[float]] = field(default_factory=list)
    rejected: list[list[float]] = field(default_factory=list)


@dataclass
class TrainedReward:
    model: Any
    initial_scores: PairScores
    final_scores: PairScores
    steps: int
    train_loss_final: float | None
    train_loss_mean: float
    resumed_from: str | None
    train_runtime_s: float | None
    train_steps_per_second: float | None

    def training_report(self) -> dict[str, Any]:
        return {"train_loss_final": self.train_loss_final, "train_loss_mean": self.train_loss_mean,
                "steps": self.steps, "resumed_from": self.resumed_from, "train_runtime_s": self.train_runtime_s,
                "train_steps_per_second": self.train_steps_per_second}
