"""The shared-backbone critic: a linear value head on the policy's last hidden states.

Against a separate value model (a copy of the reward model) it halves the update's forward and backward
work and the memory of one model. Its costs, and the options against them:
- value-loss gradients in the policy's backbone, pulling its features towards predicting returns:
  `detach_input` lets the value loss train the head alone (a linear probe on the policy's features, which
  the policy loss alone shapes);
- a critic that starts knowing nothing: a zero head makes the first advantages the plain returns (a batch-
  mean baseline); `fit_value_head` instead solves the head by ridge regression on a rollout's returns.
"""

from __future__ import annotations

from typing import Any

import torch

from trellis.rlhf import ppo


class ValueHead(torch.nn.Linear):
    """A linear value head (state dict: weight, bias); with `detach_input` no gradient reaches its input."""

    def __init__(self, in_features: int, device: Any = None, detach_input: bool = False):
        super().__init__(in_features, 1, device=device, dtype=torch.float32)
        self.detach_input = detach_input

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden.detach() if self.detach_input else hidden)


def hidden_size(model: Any) -> int:
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = inner.config
    size = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if not size:
        raise ValueError(f"{type(inner).__name__}: cannot tell the hidden size for a value head")
    return int(size)


def new_value_head(policy: Any, device: Any, detach_input: bool = False) -> ValueHead:
    """Zero-initialised, so the first values are 0 and the first advantages are the plain returns."""
    head = ValueHead(hidden_size(policy), device=device, detach_input=detach_input)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def ridge_solution(features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                   ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [H], b) minimising sum_i weights_i (features_i . w + b - targets_i)^2 + ridge * n * |w|^2.

    Features are centred first so the bias is not shrunk, and the penalty is scaled by the features'
    mean variance so `ridge` means the same at every hidden size and feature scale.
    """
    weights = weights.double()
    total = weights.sum().clamp(min=1.0)
    x, y = features.double(), targets.double()
    x_mean = (weights[:, None] * x).sum(0) / total
    y_mean = (weights * y).sum() / total
    xc, yc = x - x_mean, y - y_mean
    gram = (weights[:, None] * xc).T @ xc
    scale = gram.diagonal().mean().clamp(min=1e-12)
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    w = torch.linalg.solve(gram + ridge * scale * eye, (weights[:, None] * xc).T @ yc)
    return w.float(), (y_mean - x_mean @ w).float()


@torch.no_grad()
def fit_value_head(head: torch.nn.Linear, features: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                   gamma: float, lam: float, ridge: float = 0.1, rounds: int = 3) -> float:
    """Set the head to the ridge regression of a rollout's GAE returns on its hidden states.

    features [B, R, H] (the head's inputs at each response token), rewards and mask [B, R]. The returns
    depend on the values (lam < 1), so the fit alternates with recomputing them a few rounds. Returns the
    mean squared error of the fitted values against the final returns.
    """
    flat = features.reshape(-1, features.shape[-1]).to(head.weight.device)
    weights = mask.reshape(-1).to(head.weight.device)
    values = torch.zeros_like(rewards)
    returns = rewards
    for _ in range(max(rounds, 1)):
        _, returns = ppo.compute_gae(rewards, values, mask, gamma, lam)
        w, b = ridge_solution(flat, returns.reshape(-1), weights, ridge)
        head.weight.copy_(w.to(head.weight.dtype)[None])
        head.bias.copy_(b.to(head.bias.dtype).reshape(1))
        values = head(features.to(head.weight.dtype)).squeeze(-1).float() * mask
    return float(ppo.masked_mean((values - returns) ** 2, mask))
