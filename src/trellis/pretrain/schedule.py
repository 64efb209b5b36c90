"""Learning-rate schedule: linear warmup from zero, then cosine decay to a floor."""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (0-based: the first update uses step 0).

    Warmup reaches `lr` after `warmup_steps` updates; the cosine then falls to `min_lr` at `total_steps`
    and stays there.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int):
    """A LambdaLR whose factor times the base lr is `lr_at`; its state_dict holds only numbers."""
    from torch.optim.lr_scheduler import LambdaLR

    def factor(step: int) -> float:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, total_steps=total_steps) / lr

    return LambdaLR(optimizer, factor)
