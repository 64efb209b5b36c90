"""`trellis dpo`: Direct Preference Optimization (TRL DPOTrainer) on the reward stage's pairs, a baseline to
compare PPO with.

`model` null means the SFT stage's final checkpoint in the same run directory; `data` takes the same
sources as the reward stage ("world", a pair file, or a list of {path, axis, limit}).
"""

from typing import Literal

from trellis.config.base import HFTrainerSection
from trellis.config.reward import PairSource
from trellis.config.sft import LoRASection


class DPOConfig(HFTrainerSection):
    data: str | list[PairSource] = "world"
    epochs: float = 1.0
    batch_size: int = 8
    lr: float = 1e-5
    max_length: int = 512
    heldout_fraction: float = 0.1
    # strength of the KL anchor to the reference (the SFT model): small beta lets the policy move further
    beta: float = 0.1
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    # null: full fine-tuning (a frozen copy is the reference); LoRA: the adapter-free model is the reference
    lora: LoRASection | None = None
