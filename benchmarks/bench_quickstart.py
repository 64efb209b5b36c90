"""Time the quickstart pipeline end to end from an empty run directory and print its report card.

    python benchmarks/bench_quickstart.py [--config configs/quickstart.yaml] [--out /tmp/qs-bench]

Prints per-stage wall seconds and the acceptance figures of the foundation issue as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--out", default="/tmp/trellis-quickstart-bench")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "trellis.cli", "pipeline", args.config, "--run-dir", str(out)]
    for item in args.overrides:
        cmd += ["--set", item]
    start = time.time()
    subprocess.run(cmd, check=True)
    wall = time.time() - start
    s = json.loads((out / "summary.json").read_text())
    ev = s.get("eval", {})
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.platform()}",
        "command": " ".join(cmd),
        "wall_seconds_total": round(wall, 1),
        "wall_seconds": {k: v for k, v in s["wall_seconds"].items() if k != "this_invocation"},
        "pretrain.val_ppl_initial": s["pretrain"].get("val_ppl_initial"),
        "pretrain.val_ppl_final": s["pretrain"].get("val_ppl_final"),
        "sft.gold_score": s["sft"].get("gold_score"),
        "sft.gold": {k: s["sft"].get("gold", {}).get(k) for k in ("helpfulness", "harmlessness", "honesty")},
        "reward.accuracy": s["reward"].get("accuracy"),
        "rlhf.gold_score": s["rlhf"].get("gold_score"),
        "rlhf.gold": {k: s["rlhf"].get("gold", {}).get(k) for k in ("helpfulness", "harmlessness", "honesty")},
        "rlhf.reward_mean_initial": s["rlhf"].get("reward_mean_initial"),
        "rlhf.reward_mean_final": s["rlhf"].get("reward_mean_final"),
        "rlhf.kl_final": s["rlhf"].get("kl_final"),
        "eval": {m: {t: v for t, v in r.items() if t.startswith("world_") or t == "gold"}
                 for m, r in ev.items() if isinstance(r, dict)},
    }
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
