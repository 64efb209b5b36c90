"""Learning-rate schedules: linear warmup from zero, then cosine, linear or constant to a floor.

The warmup is given in steps or as a fraction of training, the floor as an absolute lr (`min_lr`) or
as a fraction of the peak (`min_lr_ratio`); `resolve_schedule` turns a config into plain numbers and
stops a run at start when they do not make sense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trellis.errors import TrellisError

if TYPE_CHECKING:
    from trellis.config.pretrain import PretrainConfig

KINDS = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Schedule:
    lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "cosine"


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """The learning rate for optimizer step `step` (0-based: the first update uses step 0).

    Warmup reaches `lr` after `warmup_steps` updates; the decay then falls to `min_lr` at `total_steps`
    and stays there ("constant" stays at `lr`).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if kind == "constant":
        return lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        return lr - (lr - min_lr) * progress
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def resolve_schedule(cfg: PretrainConfig) -> Schedule:
    """The schedule's numbers from a pretrain config; a warmup or floor that cannot be met is an error."""
    set_keys = cfg.model_fields_set
    steps = cfg.steps
    if steps <= 0:
        raise TrellisError(f"pretrain.steps: {steps}, must be positive")
    if cfg.lr <= 0:
        raise TrellisError(f"pretrain.lr: {cfg.lr}, must be positive")
    if cfg.warmup_fraction is not None:
        if "warmup_steps" in set_keys:
            raise TrellisError(f"pretrain.warmup_steps ({cfg.warmup_steps}) and pretrain.warmup_fraction "
                               f"({cfg.warmup_fraction}) are both set; keep one")
        if not 0.0 <= cfg.warmup_fraction <= 1.0:
            raise TrellisError(f"pretrain.warmup_fraction: {cfg.warmup_fraction}, must lie in [0, 1]")
        warmup = round(cfg.warmup_fraction * steps)
    else:
        warmup = cfg.warmup_steps
        if warmup < 0:
            raise TrellisError(f"pretrain.warmup_steps: {warmup}, must be >= 0")
    if warmup > steps:
        raise TrellisError(f"pretrain.warmup_steps: {warmup} is longer than training (pretrain.steps: {steps})")
    if cfg.min_lr_ratio is not None:
        if "min_lr" in set_keys:
            raise TrellisError(f"pretrain.min_lr ({cfg.min_lr}) and pretrain.min_lr_ratio ({cfg.min_lr_ratio}) "
                               "are both set; keep one")
        if not 0.0 <= cfg.min_lr_ratio <= 1.0:
            raise TrellisError(f"pretrain.min_lr_ratio: {cfg.min_lr_ratio}, must lie in [0, 1]")
        min_lr = cfg.lr * cfg.min_lr_ratio
    else:
        min_lr = cfg.min_lr
    if cfg.lr_schedule != "constant" and not 0.0 <= min_lr <= cfg.lr:
        raise TrellisError(f"pretrain.min_lr: {min_lr} must lie between 0 and pretrain.lr {cfg.lr}")
    return Schedule(lr=cfg.lr, min_lr=min_lr, warmup_steps=warmup, total_steps=steps, kind=cfg.lr_schedule)


def build_scheduler(optimizer, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int,
                    kind: str = "cosine"):
    """A LambdaLR whose factor times the base lr is `lr_at`; its state_dict holds only numbers."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=total_steps, kind=kind) / lr

    return LambdaLR(optimizer, factor)
