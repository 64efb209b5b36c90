"""One optimizer step: forward/backward over the micro-batches, loss scaling, clipping, update.

The loss of the step is the mean over every target token of the global batch: each micro-batch's mean
loss is weighted by its share of the tokens before backward, so accumulation gives the gradient of one
big batch. With fp16 a dynamic loss scaler multiplies the loss before backward; a step whose gradients
hold inf or nan is skipped (weights and optimizer untouched) and the scale backs off; after
`growth_interval` clean steps it grows. Weights and optimizer state stay fp32 in every precision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from trellis.pretrain.batching import loss_weights


def autocast(precision: str, device):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return nullcontext()


def causal_lm_loss(model, batch, precision: str, reduction: str = "mean"):
    """Next-token cross-entropy of windows [B, T+1]: inputs are batch[:, :-1], targets batch[:, 1:]."""
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]
    with autocast(precision, batch.device):
        logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


def build_loss_scaler(precision: str, device, init_scale: float, growth_interval: int):
    """A dynamic loss scaler for fp16, else None."""
    if precision != "fp16":
        return None
    import torch

    return torch.amp.GradScaler(device.type, init_scale=init_scale, growth_interval=growth_interval)


@dataclass
class StepResult:
    loss: float          # token-weighted mean over the global batch
    grad_norm: float     # global norm before clipping (inf/nan on a skipped step)
    skipped: bool        # fp16 overflow: no update was made
    loss_scale: float | None


def train_step(model, batches: list, optimizer, *, precision: str, grad_clip: float, scaler=None,
               world_size: int = 1, global_tokens: int | None = None,
               on_grads: Callable[[], None] | None = None) -> StepResult:
    """Forward/backward every micro-batch, then clip and update; gradients are zeroed afterwards."""
    import torch

    counts = [b[:, 1:].numel() for b in batches]
    weights = loss_weights(counts, global_tokens or sum(counts) * world_size, world_size)
    total = 0.0
    last = None
    # under DDP, gradients are all-reduced once, on the last micro-batch's backward
    no_sync = getattr(model, "no_sync", None) if hasattr(model, "module") else None
    for i, (batch, weight) in enumerate(zip(batches, weights, strict=True)):
        with no_sync() if no_sync is not None and i < len(batches) - 1 else nullcontext():
            loss = causal_lm_loss(model, batch, precision)
            # a single micro-batch has weight 1: leave the graph exactly as without accumulation
            scaled = loss if weight == 1.0 else loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        last = loss
        total += float(loss.detach()) * weight
    if len(batches) == 1:
        total = float(last.detach())
    if scaler is not None:
        scaler.unscale_(optimizer)
    if on_grads is not None:
        on_grads()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    skipped, scale = False, None
    if scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        scale = scaler.get_scale()
        skipped = scale < before
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=total, grad_norm=float(grad_norm), skipped=skipped, loss_scale=scale)
