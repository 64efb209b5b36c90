"""`trellis reward`: a pairwise (Bradley-Terry) reward model (TRL RewardTrainer)."""

from trellis.config.base import Section


class RewardConfig(Section):
    # a checkpoint directory; null in a pipeline means the SFT stage's final checkpoint
    model: str | None = None
    # "world" (the world's comparison pairs on three axes) or a path to a json/jsonl file
    data: str = "world"
    max_length: int = 256
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    # pulls mean rewards toward 0 (Eisenstein et al. 2023) so PPO sees centred scores; null turns it off
    center_rewards_coefficient: float | None = 0.01
    heldout_fraction: float = 0.1
    eval_steps: int = 50
    save_steps: int = 100
    logging_steps: int = 10
    seed: int = 0
    device: str = "auto"
