"""The global batch, its split into micro-batches over devices and accumulation steps, and the
sequence-length curriculum.

Every optimizer step draws one global batch of full-length windows from the sampler, the same on any
number of devices; device `rank` takes its contiguous share and cuts it into micro-batches. So 1 device
with 8 accumulation steps and 8 devices with 1 see the same tokens and, with the token-weighted loss
below, the same gradient. A curriculum step cuts every window [seq_len + 1] into seq_len/length windows
[length + 1] (overlapping by one token, as the packer does), so tokens per step never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from trellis.errors import TrellisError

if TYPE_CHECKING:
    import torch

    from trellis.config.pretrain import CurriculumSpec, PretrainConfig


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int   # sequences of seq_len per optimizer step, over all devices
    micro_batch_size: int    # sequences of seq_len per device per forward/backward
    world_size: int
    accumulation_steps: int
    seq_len: int

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len


def plan_batch(cfg: PretrainConfig, world_size: int = 1) -> BatchPlan:
    """The batch of a config on `world_size` devices; a split that does not come out even is an error."""
    seq_len = cfg.seq_len
    if cfg.global_batch_size is not None and cfg.global_batch_tokens is not None:
        raise TrellisError(f"pretrain.global_batch_size ({cfg.global_batch_size}) and pretrain.global_batch_tokens "
                           f"({cfg.global_batch_tokens}) are both set; keep one")
    if cfg.global_batch_tokens is not None:
        if cfg.global_batch_tokens % seq_len:
            raise TrellisError(f"pretrain.global_batch_tokens: {cfg.global_batch_tokens} is not a multiple of "
                               f"pretrain.seq_len {seq_len}")
        global_bs, key = cfg.global_batch_tokens // seq_len, "pretrain.global_batch_tokens"
    elif cfg.global_batch_size is not None:
        global_bs, key = cfg.global_batch_size, "pretrain.global_batch_size"
    else:
        global_bs, key = cfg.batch_size, "pretrain.batch_size"
    if global_bs <= 0:
        raise TrellisError(f"{key}: gives {global_bs} sequences per step, must be positive")
    micro = cfg.micro_batch_size if cfg.micro_batch_size is not None else global_bs // world_size
    if micro <= 0 or global_bs % (micro * world_size):
        raise TrellisError(
            f"{key}: {global_bs} sequences per step is not divisible by pretrain.micro_batch_size {micro} x "
            f"{world_size} device(s) = {micro * world_size}"
        )
    return BatchPlan(global_batch_size=global_bs, micro_batch_size=micro, world_size=world_size,
                     accumulation_steps=global_bs // (micro * world_size), seq_len=seq_len)


def check_curriculum(spec: CurriculumSpec, seq_len: int) -> None:
    if not 0 < spec.start <= seq_len:
        raise TrellisError(f"pretrain.seq_len_curriculum.start: {spec.start} must lie in (0, seq_len {seq_len}]")
    if spec.multiple <= 0 or seq_len % spec.multiple or spec.start % spec.multiple:
        raise TrellisError(f"pretrain.seq_len_curriculum.multiple: {spec.multiple} must divide both start "
                           f"{spec.start} and seq_len {seq_len}")
    if not 0.0 < spec.fraction <= 1.0:
        raise TrellisError(f"pretrain.seq_len_curriculum.fraction: {spec.fraction}, must lie in (0, 1]")


def curriculum_length(step: int, total_steps: int, spec: CurriculumSpec | None, seq_len: int) -> int:
    """The sequence length of optimizer step `step` (0-based).

    Linear from spec.start to seq_len over the first spec.fraction of the steps, then seq_len; snapped
    down to the largest multiple of spec.multiple that divides seq_len (so windows cut evenly).
    """
    if spec is None:
        return seq_len
    ramp = max(1, round(spec.fraction * total_steps))
    if step >= ramp:
        return seq_len
    target = spec.start + (seq_len - spec.start) * step / ramp
    length = max(spec.start, int(target) // spec.multiple * spec.multiple)
    while seq_len % length:
        length -= spec.multiple
    return max(length, spec.multiple)


def cut_windows(batch: torch.Tensor, length: int) -> torch.Tensor:
    """[B, S + 1] -> [B * S / length, length + 1]: consecutive windows of each row, overlapping by one."""
    seq_len = batch.shape[1] - 1
    if length == seq_len:
        return batch
    return batch.unfold(1, length + 1, length).reshape(-1, length + 1)


def micro_batches(batch: torch.Tensor, plan: BatchPlan, rank: int = 0) -> list[torch.Tensor]:
    """This device's micro-batches of a global batch (rows already cut to the step's length)."""
    per_device = batch.shape[0] // plan.world_size
    mine = batch[rank * per_device : (rank + 1) * per_device]
    size = per_device // plan.accumulation_steps
    return [mine[i : i + size] for i in range(0, per_device, size)]


def loss_weights(token_counts: list[int], global_tokens: int, world_size: int) -> list[float]:
    """Factors for each micro-batch's mean loss so that their sum, averaged over devices (as DDP averages
    gradients), is the mean over every target token of the global batch."""
    return [n * world_size / global_tokens for n in token_counts]
