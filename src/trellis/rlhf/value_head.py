"""The shared-backbone critic: a linear value head on the policy's last hidden states.

Against a separate value model (a copy of the reward model) it halves the update's forward and backward
work and the memory of one model, at the price of a critic that starts from zero and of value-loss
gradients in the policy's backbone (kept small by vf_coef).
"""

from __future__ import annotations

from typing import Any

import torch


def hidden_size(model: Any) -> int:
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = inner.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not size:
        raise ValueError(f"{type(inner).__name__}: cannot tell the hidden size for a value head")
    return int(size)


def new_value_head(policy: Any, device: Any) -> torch.nn.Linear:
    """Zero-initialised, so the first values are 0 and the first advantages are the plain returns."""
    head = torch.nn.Linear(hidden_size(policy), 1, device=device, dtype=torch.float32)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head
