"""`trellis rlhf`: PPO of our own against a reward model, with a frozen reference."""

from typing import Literal

from trellis.config.base import Section


class RLHFConfig(Section):
    # checkpoint directories; null in a pipeline means the SFT / reward stage's final checkpoint
    policy: str | None = None
    reward_model: str | None = None
    # "world" (held-out RLHF prompts) or a path to a json/jsonl file of {"prompt": ...}
    prompts: str = "world"
    steps: int = 40
    rollout_batch_size: int = 32
    minibatch_size: int = 8
    ppo_epochs: int = 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 1e-4
    value_lr: float | None = None
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = 1.0
    grad_clip: float = 1.0
    save_every: int = 20
    log_every: int = 1
    seed: int = 0
    device: str = "auto"
