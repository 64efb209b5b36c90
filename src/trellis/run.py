"""A stage's run directory: resolved config, metrics.jsonl, TensorBoard, summary.json, checkpoints.

Layout of `runs/<name>/<stage>/`:
    config.yaml        the resolved config of this stage
    metrics.jsonl      one JSON object per logged step
    tb/                TensorBoard event files
    checkpoints/       step-N/ directories for resume (written atomically)
    final/             the stage's output as a Hugging Face checkpoint directory
    summary.json       written last; {"status": "done"} marks the stage finished
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trellis.config import dump_yaml


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class StageRun:
    """Everything a stage writes goes through this object, so every stage leaves the same layout."""

    def __init__(self, root: str | Path, stage: str, config: Any | None = None, tensorboard: bool = True):
        self.stage = stage
        self.dir = Path(root) / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoints_dir = self.dir / "checkpoints"
        self.final_dir = self.dir / "final"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.summary_path = self.dir / "summary.json"
        self._start = time.time()
        self._writer = None
        if config is not None:
            dump_yaml(config, self.dir / "config.yaml")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.dir / "tb"))

    # -- metrics -----------------------------------------------------------------------------------------
    def log(self, step: int, **metrics: float) -> None:
        clean = {k: _finite(float(v)) if isinstance(v, int | float) or hasattr(v, "item") else v
                 for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time() - self._start, 3), **clean}
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
        if self._writer is not None:
            for key, value in clean.items():
                if isinstance(value, float):
                    self._writer.add_scalar(f"{self.stage}/{key}", value, step)

    def truncate_metrics_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint so the curve has no duplicated steps."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    # -- summary / completion ------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return time.time() - self._start

    def write_summary(self, summary: dict[str, Any], done: bool = True) -> None:
        payload = {**summary, "status": "done" if done else "running"}
        payload.setdefault("wall_seconds", round(self.elapsed, 2))
        write_json_atomic(self.summary_path, payload)

    def is_done(self) -> bool:
        return stage_done(self.dir)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # -- checkpoints -------------------------------------------------------------------------------------
    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:07d}"

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.checkpoints_dir)

    def save_final_model(self, model: Any, tokenizer: Any) -> Path:
        """final/: a Hugging Face checkpoint with the tokenizer and generation config, written atomically."""

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)

        return save_atomic(self.final_dir, write)

    def prune_checkpoints(self, keep_last: int) -> None:
        steps = sorted(p for p in self.checkpoints_dir.glob("step-*") if p.is_dir())
        for old in steps[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)

    def progress(self, total: int, desc: str | None = None, initial: int = 0):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc or self.stage, initial=initial, dynamic_ncols=True,
                    disable=os.environ.get("TRELLIS_NO_PROGRESS") == "1")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_done(stage_dir: Path) -> bool:
    summary = stage_dir / "summary.json"
    if not summary.exists():
        return False
    try:
        return json.loads(summary.read_text()).get("status") == "done"
    except json.JSONDecodeError:
        return False


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete checkpoint; half-written ones (.tmp) are ignored."""
    if not checkpoints_dir.exists():
        return None
    steps = sorted(p for p in checkpoints_dir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return steps[-1] if steps else None


def save_atomic(target: Path, write: Any) -> Path:
    """Call write(tmp_dir) and then rename tmp_dir to target, so a kill never leaves half a checkpoint."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def flatten(prefix: str, data: dict[str, Any], out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flatten(name, value, out)
        else:
            out[name] = value
    return out


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
