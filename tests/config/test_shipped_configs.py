"""Every YAML shipped in configs/ must load, so none rots."""

from pathlib import Path

import pytest

from trellis.config import load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any(p.name == "quickstart.yaml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.name))
def test_config_loads(path):
    cfg = load_config(path)
    assert cfg.stages, f"{path} runs no stage"
