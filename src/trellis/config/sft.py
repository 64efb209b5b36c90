"""`trellis sft`: supervised fine-tuning with the loss on responses only (TRL SFTTrainer)."""

from trellis.config.base import Section


class SFTConfig(Section):
    # a checkpoint directory; null in a pipeline means the pretrain stage's final checkpoint
    model: str | None = None
    # "world" (the synthetic world's instructions) or a path to a json/jsonl file
    data: str = "world"
    max_length: int = 256
    # pack several short examples into one max_length row (off: one example a row)
    packing: bool = False
    epochs: float = 8.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_fraction: float = 0.05
    eval_steps: int = 50
    save_steps: int = 100
    logging_steps: int = 10
    seed: int = 0
    device: str = "auto"
