"""`trellis sft`: supervised fine-tuning with the loss on responses only (TRL SFTTrainer).

`model` null in a pipeline means the pretrain stage's final checkpoint; `data` "world" means the
synthetic world's instructions.
"""

from trellis.config.base import HFTrainerSection


class SFTConfig(HFTrainerSection):
    # pack several short examples into one max_length row (off: one example a row)
    packing: bool = False
    epochs: float = 8.0
    lr: float = 2e-3
    eval_fraction: float = 0.05
