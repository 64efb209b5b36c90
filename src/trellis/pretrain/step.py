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


def next_token_loss_module(lm, precision: str):
    """The causal LM and its next-token loss as one module mapping windows [B, T+1] to the mean loss.

    Compiled as one graph, inductor fuses the logits' fp32 upcast into the cross-entropy instead of
    materialising fp32 logits (B x T x vocab x 4 bytes: 4 GiB for 4 x 2048 tokens of a 128k vocabulary).
    Its parameters are the LM's, under the prefix `lm.`.
    """
    import torch

    class NextTokenLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, batch):
            return causal_lm_loss(self.lm, batch, precision)

    return NextTokenLoss()


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
               on_grads: Callable[[], None] | None = None, loss_fn: Callable | None = None) -> StepResult:
    """Forward/backward every micro-batch, then clip and update; gradients are zeroed afterwards.

    `model` is the module whose parameters are trained (an LM, or a next_token_loss_module, maybe wrapped
    by DDP or torch.compile); `loss_fn(batch)` gives a micro-batch's mean loss (default: the LM's
    next-token loss; pass the loss module itself when `model` is one).
    """
    import torch

    if loss_fn is None:
        def loss_fn(b):
            return causal_lm_loss(model, b, precision)

    counts = [b[:, 1:].numel() for b in batches]
    weights = loss_weights(counts, global_tokens or sum(counts) * world_size, world_size)
    # summed on the device: one host sync per step, not one per micro-batch
    total = None
    last = None
    # under DDP, gradients are all-reduced once, on the last micro-batch's backward
    no_sync = getattr(model, "no_sync", None) if hasattr(model, "module") else None
    for i, (batch, weight) in enumerate(zip(batches, weights, strict=True)):
        with no_sync() if no_sync is not None and i < len(batches) - 1 else nullcontext():
            loss = loss_fn(batch)
            # a single micro-batch has weight 1: leave the graph exactly as without accumulation
            scaled = loss if weight == 1.0 else loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        last = loss
        part = loss.detach().float() * weight
        total = part if total is None else total + part
    total = float(last.detach()) if len(batches) == 1 else float(total)
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
