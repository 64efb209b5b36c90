"""Held-out pairwise accuracy per axis of the configs/smollm2-hh.yaml reward model on hh-rlhf.

    python benchmarks/bench_reward_hh.py [--out DIR] [--model DIR] [--set reward.lr=2e-5 ...]

Runs the recipe (SFT on Alpaca rows, then the reward model on helpful-base + harmless-base with a held-out
split) through `trellis pipeline` and prints one JSON record: accuracy per axis, steps, minutes per stage,
the device and the machine load. --model defaults to the converted SmolLM2-135M-Instruct
(trellis.convert.smollm2). Run it from the checkout (the recipe's data paths are relative to it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "smollm2-hh.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="run directory (default: a new temporary one)")
    parser.add_argument("--model", default=None, help="input checkpoint of the SFT stage")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from trellis.config import load_config
    from trellis.pipeline import run_pipeline

    if args.model is None:
        from trellis.convert.smollm2 import smollm2_checkpoint

        args.model = str(smollm2_checkpoint())
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-reward-hh-"))
    cfg = load_config(RECIPE, [f"sft.model={args.model}", *args.overrides])
    load_before = os.getloadavg()
    start = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON record
        run_pipeline(cfg, out)
    summary = {stage: json.loads((out / stage / "summary.json").read_text()) for stage in cfg.stages}
    reward = summary["reward"]
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "command": "python benchmarks/bench_reward_hh.py " + " ".join(f"--set {o}" for o in args.overrides),
        "heldout_accuracy": reward["accuracy"],
        "heldout_pairs": reward["pairs"],
        "accuracy_initial": reward["accuracy_initial"],
        "combined_accuracy": reward.get("combined", {}).get("accuracy"),
        "calibration_ece": reward["calibration"]["ece"],
        "length_correlation": reward["length_correlation"],
        "reward_steps": reward["steps"],
        "train_pairs": reward["train_pairs"],
        "truncated_pairs": reward["truncated_pairs"],
        "minutes": {stage: round(s["wall_seconds"] / 60, 2) for stage, s in summary.items()},
        "minutes_total": round((time.time() - start) / 60, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
