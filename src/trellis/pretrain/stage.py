"""`trellis pretrain`: train a Llama-style decoder from scratch; returns the final/ checkpoint directory."""

from __future__ import annotations

from pathlib import Path

from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig


def run(config: PretrainConfig, world: WorldConfig, run_root: Path) -> Path:
    from trellis.pretrain.trainer import pretrain

    return pretrain(config, world, Path(run_root))
