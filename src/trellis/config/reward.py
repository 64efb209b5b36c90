"""`trellis reward`: a pairwise (Bradley-Terry) reward model (TRL RewardTrainer).

`model` null in a pipeline means the SFT stage's final checkpoint; `data` "world" means the world's
comparison pairs on three axes.
"""

from trellis.config.base import HFTrainerSection


class RewardConfig(HFTrainerSection):
    epochs: float = 2.0
    lr: float = 5e-4
    # pulls mean rewards toward 0 (Eisenstein et al. 2023) so PPO sees centred scores; null turns it off
    center_rewards_coefficient: float | None = 0.01
    heldout_fraction: float = 0.1
