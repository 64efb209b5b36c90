"""Glue between Hugging Face / TRL trainers and a Trellis StageRun (shared by the SFT and reward stages).

HF Trainer writes its own `checkpoint-N/` directories (model, optimizer, scheduler, RNG, trainer_state.json)
under `<stage>/checkpoints/`; trainer_state.json is written last, so a directory without it is a checkpoint a
kill interrupted and is skipped on resume.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trellis.run import StageRun

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def latest_hf_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` directory HF Trainer wrote, or None."""
    if not checkpoints_dir.exists():
        return None
    found = []
    for p in checkpoints_dir.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def checkpoint_step(path: Path) -> int:
    m = _CHECKPOINT_RE.match(path.name)
    return int(m.group(1)) if m else 0


def make_log_callback(run: StageRun, prefix: str = "", step_offset: int = 0):
    """A TrainerCallback that forwards every Trainer log (train and eval) to run.log.

    `prefix` and `step_offset` let several trainers share one stage's curve (the reward stage's
    separate models: `helpfulness/loss` at steps 1..n, then `harmlessness/loss` at n+1..).
    """
    from transformers import TrainerCallback

    class StageRunLogger(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF signature
            if not logs:
                return
            numeric = {f"{prefix}{k}": v for k, v in logs.items()
                       if isinstance(v, int | float) and not isinstance(v, bool)}
            if numeric:
                run.log(step_offset + int(state.global_step), **numeric)

    return StageRunLogger()


def use_cpu(device: str) -> bool:
    from trellis.device import resolve_device

    return resolve_device(device).type == "cpu"


def common_training_args(config: Any, run: StageRun, has_eval: bool, output_dir: Path | None = None
                         ) -> dict[str, Any]:
    """TrainingArguments fields both stages share, from a stage config with the usual Trellis fields.
    HF checkpoints go to `output_dir` (default: the stage's checkpoints/)."""
    import os

    import torch

    if os.environ.get("TRELLIS_NO_PROGRESS") == "1":
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()
    cpu = use_cpu(config.device)
    bf16 = (not cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {
        "output_dir": str(output_dir or run.checkpoints_dir),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.lr,
        "lr_scheduler_type": config.lr_scheduler,
        # a float below 1 is a fraction of the total steps in transformers 5
        "warmup_steps": float(config.warmup_ratio),
        "weight_decay": config.weight_decay,
        "logging_steps": config.logging_steps,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "eval_strategy": "steps" if has_eval else "no",
        "eval_steps": config.eval_steps if has_eval else None,
        "seed": config.seed,
        "report_to": [],
        "use_cpu": cpu,
        "bf16": bf16,
        "fp16": False,
        # TRL turns checkpointing on by default; tiny models only pay its recompute cost
        "activation_checkpointing": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": os.environ.get("TRELLIS_NO_PROGRESS") == "1",
        "max_length": config.max_length,
    }


def resume_point(run: StageRun, checkpoints_dir: Path | None = None, step_offset: int = 0) -> Path | None:
    """The checkpoint to resume from; metrics past it (all of a run killed before its first checkpoint)
    are dropped so the curve has no repeated steps."""
    ckpt = latest_hf_checkpoint(checkpoints_dir or run.checkpoints_dir)
    run.truncate_metrics_after(step_offset + (checkpoint_step(ckpt) if ckpt is not None else 0))
    return ckpt


def last_logged(history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key])
    return None


def without_stdout_printer(trainer: Any) -> Any:
    """HF Trainer prints raw log dicts when its progress bar is off; our logs go to metrics.jsonl."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
