"""The base of every config section: strict (unknown keys fail) and typed."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class HFTrainerSection(Section):
    """What the stages built on the HF/TRL Trainer share (SFT, reward)."""

    # a checkpoint directory; null in a pipeline means the previous stage's final checkpoint
    model: str | None = None
    # "world" (the synthetic world's data) or a path to a json/jsonl file
    data: str = "world"
    max_length: int = 256
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_steps: int = 50
    save_steps: int = 100
    logging_steps: int = 10
    seed: int = 0
    device: str = "auto"
