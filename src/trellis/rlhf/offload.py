"""Frozen models in host memory between uses (`rlhf.offload_frozen`).

PPO's frozen roles (the reference policy and the reward model) are read only while a rollout is scored
and when samples are scored; the update, where memory peaks (policy, critic, optimizer state and
activations), does not touch them. With offloading they live in host memory and move to the training
device for those passes only, so the update's peak holds the trained models alone. Each move costs one
copy of their weights over the host link per scoring pass. On a CPU run there is nothing to offload.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

HOME = torch.device("cpu")


def _is_accelerator(device: Any) -> bool:
    return torch.device(device).type != "cpu"


class FrozenOffload:
    """`on_device()` brings the frozen models to `device` for the body of a `with` and sends them home after."""

    def __init__(self, models: list[Any], device: Any, enabled: bool) -> None:
        self.models = [m for m in models if m is not None]
        self.device = torch.device(device)
        self.enabled = enabled and bool(self.models) and _is_accelerator(self.device)
        self.depth = 0
        if self.enabled:
            self._move(HOME)

    def _move(self, device: torch.device) -> None:
        for model in self.models:
            model.to(device)

    @property
    def home(self) -> bool:
        """Whether the frozen models are in host memory now (always false when offloading is off)."""
        return self.enabled and self.depth == 0

    @contextlib.contextmanager
    def on_device(self) -> Iterator[None]:
        # nested uses (a rollout inside the value warmup, say) move the weights once
        outermost = self.enabled and self.depth == 0
        if outermost:
            self._move(self.device)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if outermost:
                self._move(HOME)
