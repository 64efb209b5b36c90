"""Chain the stages in one run directory: fill each stage's inputs from the stages before it, skip
finished stages, let an interrupted stage resume from its last checkpoint, write the pipeline summary
and report."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from trellis.config import PipelineConfig, dump_yaml
from trellis.errors import TrellisError
from trellis.run import stage_done, write_json_atomic

# where each stage takes its input checkpoints from when its config leaves them null
_INPUTS: dict[str, dict[str, str]] = {
    "sft": {"model": "pretrain"},
    "reward": {"model": "sft"},
    "rlhf": {"policy": "sft", "reward_model": "reward"},
}
# the models the eval stage compares when its config names none
_EVAL_MODELS = {"base": "pretrain", "sft": "sft", "rlhf": "rlhf"}


def _final_dir(run_root: Path, stage: str) -> Path:
    return run_root / stage / "final"


def _fill_inputs(stage: str, cfg: PipelineConfig, run_root: Path) -> Any:
    """The stage's config with null input checkpoints replaced by earlier stages' final/ dirs."""
    section = getattr(cfg, stage).model_copy(deep=True)
    for key, source in _INPUTS.get(stage, {}).items():
        if getattr(section, key) is None:
            final = _final_dir(run_root, source)
            if not final.exists():
                raise TrellisError(
                    f"{stage}.{key} is not set and {final} does not exist: run the {source} stage first "
                    f"or set {stage}.{key} to a checkpoint directory"
                )
            setattr(section, key, str(final))
    if stage == "eval" and not section.models:
        models = {name: str(_final_dir(run_root, src)) for name, src in _EVAL_MODELS.items()
                  if _final_dir(run_root, src).exists()}
        if not models:
            raise TrellisError(f"eval.models is empty and {run_root} holds no trained model to evaluate")
        section.models = models
    return section


def run_stage(stage: str, cfg: PipelineConfig, run_root: Path) -> Path:
    """Run one stage (resuming it if it was interrupted) and return its output directory."""
    section = _fill_inputs(stage, cfg, run_root)
    module = importlib.import_module(f"trellis.{stage}.stage")
    return Path(module.run(section, cfg.world, run_root))


def read_stage_summary(run_root: Path, stage: str) -> dict[str, Any]:
    path = run_root / stage / "summary.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TrellisError(f"{path}: corrupt summary ({exc.msg}); delete it to rerun the stage") from None


def run_pipeline(cfg: PipelineConfig, run_root: Path) -> Path:
    """Run cfg.stages in order into run_root; return the path of the pipeline's summary.json."""
    run_root.mkdir(parents=True, exist_ok=True)
    dump_yaml(cfg, run_root / "config.yaml")
    start = time.time()
    for stage in cfg.stages:
        if stage_done(run_root / stage):
            print(f"[trellis] {stage}: finished earlier, skipping ({run_root / stage})", flush=True)
            continue
        print(f"[trellis] {stage}: running in {run_root / stage}", flush=True)
        run_stage(stage, cfg, run_root)
    summary: dict[str, Any] = {"name": cfg.name, "run_dir": str(run_root), "stages": list(cfg.stages)}
    for stage in cfg.stages:
        summary[stage] = read_stage_summary(run_root, stage)
    summary["wall_seconds"] = {
        stage: summary[stage].get("wall_seconds") for stage in cfg.stages if summary.get(stage)
    }
    summary["wall_seconds"]["this_invocation"] = round(time.time() - start, 2)
    path = run_root / "summary.json"
    write_json_atomic(path, summary)
    from trellis.report import write_report

    write_report(run_root, summary)
    return path
