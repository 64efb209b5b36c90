"""AdamW with weight decay on weight matrices only (not on norms or biases)."""

from __future__ import annotations

from typing import Any


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: matrices (embeddings and linear weights) decay, vectors (norm gains, biases) do not.

    Tied parameters appear once, since named_parameters() deduplicates them.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model, *, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                    fused: bool = False):
    import torch

    extra = {"fused": True} if fused else {}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **extra)
