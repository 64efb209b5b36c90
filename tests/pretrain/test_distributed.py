"""Two CPU ranks under torchrun (gloo) train on the same global batch as one process with accumulation."""

import json
import os
import subprocess
import sys

import pytest

from trellis.config.world import WorldConfig
from trellis.pretrain.trainer import pretrain
from trellis.run import read_metrics

SCRIPT = """
import json, sys
from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig
from trellis.pretrain.trainer import pretrain
pretrain(PretrainConfig.model_validate(json.loads(sys.argv[1])), WorldConfig(), sys.argv[2])
"""


def _losses(stage):
    return [r["loss"] for r in read_metrics(stage / "metrics.jsonl") if "loss" in r]


@pytest.mark.slow
def test_two_ranks_match_one_process_with_accumulation(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=6, warmup_steps=2, log_every=1, eval_every=3, save_every=3,
                       global_batch_size=8, micro_batch_size=2, monitor={"communication": True})
    pretrain(cfg, WorldConfig(), tmp_path / "one")  # 1 device: 4 accumulation steps
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRELLIS_NO_PROGRESS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                    str(script), cfg.model_dump_json(), str(tmp_path / "two")], check=True, env=env, timeout=300)
    one, two = _losses(tmp_path / "one" / "pretrain"), _losses(tmp_path / "two" / "pretrain")
    assert len(two) == 6 and two == pytest.approx(one, rel=1e-5)
    comm = [r for r in read_metrics(tmp_path / "two" / "pretrain" / "metrics.jsonl") if "comm_s" in r]
    assert len(comm) == 6 and all(r["comm_s"] > 0 and 0 < r["comm_fraction"] < 1 for r in comm)
    assert not any("comm_s" in r for r in read_metrics(tmp_path / "one" / "pretrain" / "metrics.jsonl"))
    summary = json.loads((tmp_path / "two" / "pretrain" / "summary.json").read_text())
    assert summary["accumulation_steps"] == 2 and summary["tokens"] == 6 * 8 * 32
    ckpts = sorted(p.name for p in (tmp_path / "two" / "pretrain" / "checkpoints").iterdir())
    assert ckpts == ["step-0000003", "step-0000006"]  # rank 0 alone writes, nothing half-written
