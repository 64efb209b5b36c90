"""The whole pipeline on a very small world, killed in the middle and rerun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"

REQUIRED_KEYS = [
    ("pretrain", "val_ppl_initial"), ("pretrain", "val_ppl_final"), ("sft", "gold_score"),
    ("reward", "accuracy", "helpfulness"), ("reward", "accuracy", "harmlessness"),
    ("reward", "accuracy", "honesty"), ("rlhf", "gold_score"), ("rlhf", "reward_mean_initial"),
    ("rlhf", "reward_mean_final"), ("rlhf", "kl_final"),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TRELLIS_NO_PROGRESS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _pipeline_cmd(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "trellis.cli", "pipeline", str(SMOKE), "--run-dir", str(run_dir)]


def _get(data: dict, *keys):
    for key in keys:
        data = data[key]
    return data


@pytest.mark.slow
def test_pipeline_killed_then_rerun_completes_without_redoing_finished_stages(tmp_path):
    run_dir = tmp_path / "run"
    # first invocation: kill it (SIGKILL, no cleanup) once SFT has written a checkpoint
    proc = subprocess.Popen(_pipeline_cmd(run_dir), env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    sft_ckpts = run_dir / "sft" / "checkpoints"
    while time.time() < deadline and proc.poll() is None:
        if sft_ckpts.exists() and any(p.name.startswith("checkpoint-") for p in sft_ckpts.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"pipeline ended before it could be killed:\n{proc.stdout.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pretrain_summary = run_dir / "pretrain" / "summary.json"
    assert json.loads(pretrain_summary.read_text())["status"] == "done"
    assert not (run_dir / "sft" / "summary.json").exists()
    pretrain_mtime = pretrain_summary.stat().st_mtime_ns

    # second invocation: finishes, skipping pretrain and resuming SFT
    out = subprocess.run(_pipeline_cmd(run_dir), env=_env(), cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "pretrain: finished earlier, skipping" in out.stdout
    assert pretrain_summary.stat().st_mtime_ns == pretrain_mtime

    summary = json.loads((run_dir / "summary.json").read_text())
    for keys in REQUIRED_KEYS:
        value = _get(summary, *keys)
        assert isinstance(value, int | float), (keys, value)
    for stage in ("pretrain", "sft", "reward", "rlhf", "eval"):
        assert summary["wall_seconds"][stage] > 0
        assert (run_dir / stage / "metrics.jsonl").exists() and (run_dir / stage / "config.yaml").exists()
    assert summary["pretrain"]["val_ppl_final"] < summary["pretrain"]["val_ppl_initial"]
    for model in ("base", "sft", "rlhf"):
        assert isinstance(_get(summary, "eval", model, "world_mmlu", "acc"), float)
    for stage in ("pretrain", "sft", "reward", "rlhf"):
        assert (run_dir / stage / "final" / "config.json").exists()
    report = (run_dir / "report.md").read_text()
    assert "pretrain_curves.png" in report and (run_dir / "pretrain_curves.png").exists()

    # a third invocation does nothing but rewrite the summary
    again = subprocess.run(_pipeline_cmd(run_dir), env=_env(), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0
    assert again.stdout.count("finished earlier, skipping") == 5
