"""The quickstart's pretraining on the default world: about a minute on 2 idle cores."""

import json

import pytest

from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig
from trellis.pretrain.stage import run


@pytest.mark.slow
def test_default_world_pretrain_reaches_low_perplexity(tmp_path):
    run(PretrainConfig(), WorldConfig(), tmp_path)
    summary = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    assert summary["val_ppl_initial"] > 500
    assert summary["val_ppl_final"] < 10
