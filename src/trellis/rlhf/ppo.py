"""The mathematics of PPO for language models, as pure tensor functions.

Shapes: every per-token tensor is [batch, response_len]; `mask` is 1.0 on real response tokens and 0.0 on
padding after the response (responses are right-padded, so a row's mask is a prefix of ones).
References: Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Ziegler et al. 2019 (KL-penalised
rewards), Schulman's note "Approximating KL divergence" (k1/k3 estimators).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


# -- masked statistics ------------------------------------------------------------------------------------
def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum() if dim is None else (values * mask).sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return masked_sum(values, mask) / mask.sum().clamp(min=1)
    return masked_sum(values, mask, dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the masked entries; padding comes back as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# -- log-probabilities and entropy ------------------------------------------------------------------------
def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under softmax(logits); logits [..., V], labels [...]."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position (nats)."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# -- KL and rewards ---------------------------------------------------------------------------------------
def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative per token); k3 = (r - 1) - log r with r = q/p
    (unbiased, always >= 0, lower variance).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r} (expected 'k1' or 'k3')")


def apply_missing_eos_penalty(scores: torch.Tensor, ended_with_eos: torch.Tensor,
                              penalty: float | None) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that was cut off before its eos token."""
    if not penalty:
        return scores
    return scores - penalty * (~ended_with_eos.bool()).to(scores.dtype)


def overlong_penalties(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """The soft over-length penalty of DAPO (Yu et al. 2025) per response: 0 up to `max_new_tokens - buffer`
    tokens, then rising linearly to `penalty` at `max_new_tokens` (and staying there), so that answers
    nearing the length cap lose reward before they are cut off."""
    if not penalty or buffer <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    over = (lengths.float() - (max_new_tokens - buffer)) / buffer
    return penalty * over.clamp(min=0.0, max=1.0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row (0 for an empty row)."""
    return (mask.sum(-1).long() - 1).clamp(min=0)


def compute_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                    kl_coef: float) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every response token, plus the score on the final one."""
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = mask.sum(-1) > 0
    rewards[rows, last] += scores.to(rewards.dtype) * has_tokens.to(rewards.dtype)
    return rewards


# -- advantages -------------------------------------------------------------------------------------------
def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}, where V and A past the
    last real token are 0 (the episode ends there). Returns (advantages, returns = advantages + values),
    both zero on padding.
    """
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_mask = mask[:, t + 1] if t + 1 < length else torch.zeros_like(mask[:, 0])
        next_value = values[:, t + 1] * next_mask if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


# -- losses -----------------------------------------------------------------------------------------------
@dataclass
class PolicyLossOutput:
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor
    ratio_mean: torch.Tensor


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> PolicyLossOutput:
    """Clipped surrogate objective: mean over tokens of max(-A * r, -A * clip(r, 1 - eps, 1 + eps))."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
        ratio_mean = masked_mean(ratio, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl, ratio_mean)


@dataclass
class ValueLossOutput:
    loss: torch.Tensor
    clip_fraction: torch.Tensor


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> ValueLossOutput:
    """0.5 * max((V - R)^2, (clip(V, V_old +- eps) - R)^2), the pessimistic clipped value loss."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped_err > unclipped_err).float(), mask)
    return ValueLossOutput(loss, clip_fraction)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked entries: 1 is a perfect critic, 0 is no better than a constant."""
    var_returns = masked_var(returns, mask)
    if var_returns <= 0:
        return torch.tensor(float("nan"))
    return 1.0 - masked_var(returns - values, mask) / var_returns
