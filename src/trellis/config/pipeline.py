"""One config for a whole pipeline: every stage's section plus what they share."""

from typing import Literal

from trellis.config.base import Section
from trellis.config.dpo import DPOConfig
from trellis.config.eval import EvalConfig
from trellis.config.pretrain import PretrainConfig
from trellis.config.reward import RewardConfig
from trellis.config.rlhf import RLHFConfig
from trellis.config.serve import ServeConfig
from trellis.config.sft import SFTConfig
from trellis.config.world import WorldConfig

StageName = Literal["pretrain", "sft", "reward", "rlhf", "eval"]
STAGE_ORDER: tuple[str, ...] = ("pretrain", "sft", "reward", "rlhf", "eval")


class PipelineConfig(Section):
    name: str = "quickstart"
    # runs/<name>/<stage>/ ; --run-dir replaces runs/<name>
    runs_root: str = "runs"
    stages: list[StageName] = list(STAGE_ORDER)
    world: WorldConfig = WorldConfig()
    pretrain: PretrainConfig = PretrainConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    rlhf: RLHFConfig = RLHFConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    # not in STAGE_ORDER: a baseline run on its own with `trellis dpo CONFIG`
    dpo: DPOConfig = DPOConfig()
