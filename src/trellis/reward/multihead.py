"""Training several reward heads on one backbone: each pair's Bradley-Terry loss uses its own axis's head.

TRL's RewardTrainer insists on num_labels == 1, so this is a plain HF Trainer with TRL's preference
collator (chosen rows first, then rejected) plus each pair's head index.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer
from trl.trainer.reward_trainer import DataCollatorForPreference


class HeadIndexCollator(DataCollatorForPreference):
    """TRL's preference collator that also passes on which head scores each pair."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch["head"] = torch.tensor([ex["head"] for ex in examples], dtype=torch.long)
        return batch


def pairwise_head_loss(logits: torch.Tensor, head: torch.Tensor, margin: float,
                       center_coefficient: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [2B, heads] (chosen rows, then rejected) -> (loss, margins [B]) on each pair's own head."""
    chosen_all, rejected_all = torch.chunk(logits, 2)
    chosen = chosen_all.gather(1, head[:, None]).squeeze(1)
    rejected = rejected_all.gather(1, head[:, None]).squeeze(1)
    loss = -nn.functional.logsigmoid(chosen - rejected - margin).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((chosen + rejected) ** 2)
    return loss, (chosen - rejected).detach()


class MultiHeadRewardTrainer(Trainer):
    def __init__(self, *args: Any, margin: float = 0.0, center_rewards_coefficient: float | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.margin = margin
        self.center_rewards_coefficient = center_rewards_coefficient
        self._accuracies: list[float] = []
        # as in TRL's RewardTrainer: evaluation calls compute_loss only with these two set
        self.can_return_loss = True
        self.label_names = []

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        head = inputs.pop("head")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        loss, margins = pairwise_head_loss(outputs.logits, head, self.margin, self.center_rewards_coefficient)
        if model.training:
            self._accuracies.append(float((margins > 0).float().mean()))
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._accuracies and "loss" in logs:
            logs["accuracy"] = sum(self._accuracies) / len(self._accuracies)
            self._accuracies.clear()
        super().log(logs, start_time)
