"""`reward.separate_models`: one reward model per axis, each trained on its own axis's pairs alone.

The members train one after another in the same stage run. Member k keeps its HF checkpoints in
checkpoints/<axis>/, names its metrics `<axis>/loss`, `<axis>/eval_loss`, ... and continues the step count
of the members before it, so metrics.jsonl and TensorBoard hold one curve. A finished member is saved to
members/<axis>/ with its report (member.json: steps, losses, its scores of every held-out pair before and
after training), its checkpoints are removed, and a resumed run skips it. final/ is the ensemble
checkpoint (trellis.reward.ensemble): the members side by side (hard links to members/), their
combination and the tokenizer.

The held-out diagnostics are those of the multi-head model: every pair judged by its own axis's model,
and `combined` for the combination PPO reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from trellis.config import RewardConfig
from trellis.errors import TrellisError
from trellis.reward.ensemble import write_ensemble_files
from trellis.reward.stage import diagnostics_summary, fitted_spec, save_tokenizer_files, train_model
from trellis.reward.training import PairScores, TrainingSlot
from trellis.run import StageRun, save_atomic

MEMBER_REPORT = "member.json"


def train_separate_models(config: RewardConfig, run: StageRun, model_dir: Path, tokenizer: Any,
                          train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]]
                          ) -> tuple[Path, dict[str, Any]]:
    """Train (or pick up) every axis's model, write the ensemble to final/; (final/, summary fields)."""
    assert config.heads, "RewardConfig requires heads with separate_models"
    reports: dict[str, dict[str, Any]] = {}
    offset = 0
    for axis in config.heads:
        reports[axis] = _member(config, run, model_dir, tokenizer, axis, train_rows, heldout_rows, offset)
        offset += reports[axis]["steps"]

    initial = _stacked([reports[a]["initial_scores"] for a in config.heads])
    final_scores = _stacked([reports[a]["final_scores"] for a in config.heads])
    spec = fitted_spec(config, final_scores, heldout_rows)
    diagnostics = diagnostics_summary(heldout_rows, initial, final_scores, spec)
    if heldout_rows:
        run.log(offset, heldout_accuracy=diagnostics["accuracy"]["overall"],
                heldout_margin=diagnostics["margin_mean"])

    def write(tmp: Path) -> None:
        for axis in config.heads:
            _link_tree(run.dir / "members" / axis, tmp / axis, skip={MEMBER_REPORT})
        write_ensemble_files(tmp, spec)
        save_tokenizer_files(tmp, tokenizer)

    final = save_atomic(run.final_dir, write)
    members = {axis: {k: v for k, v in report.items() if not k.endswith("_scores")}
               for axis, report in reports.items()}
    return final, {**diagnostics, "heads": spec, "separate_models": True, "members": members, "steps": offset,
                   "resumed_from": next((m["resumed_from"] for m in members.values() if m["resumed_from"]), None)}


def _member(config: RewardConfig, run: StageRun, model_dir: Path, tokenizer: Any, axis: str,
            train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]], step_offset: int
            ) -> dict[str, Any]:
    """One axis's model: trained on that axis's pairs and saved to members/<axis>/, or its saved report."""
    member_dir = run.dir / "members" / axis
    if (member_dir / MEMBER_REPORT).exists():
        report = json.loads((member_dir / MEMBER_REPORT).read_text())
        if len(report["final_scores"]["chosen"]) != len(heldout_rows):
            raise TrellisError(f"{member_dir}: this {axis} model was trained on other data "
                               f"({len(report['final_scores']['chosen'])} held-out pairs, now {len(heldout_rows)}); "
                               "remove the directory to train it again")
        return report
    own_train = [r for r in train_rows if r["axis"] == axis]
    own_heldout = [r for r in heldout_rows if r["axis"] == axis]
    if not own_train:
        raise TrellisError(f"reward.heads: axis {axis!r} has no training pairs, and separate_models trains "
                           "each axis's model on that axis's pairs alone")
    slot = TrainingSlot(labels=[axis], checkpoints_dir=run.checkpoints_dir / axis, log_prefix=f"{axis}/",
                        step_offset=step_offset)
    # the model's eval loss is on its own axis; its scores of every held-out pair feed the combination
    trained = train_model(config, run, model_dir, tokenizer, own_train, own_heldout, member=slot,
                          score_rows=heldout_rows)
    report = {"axis": axis, "train_pairs": len(own_train), "heldout_pairs": len(own_heldout),
              **trained.training_report(),
              "initial_scores": vars(trained.initial_scores), "final_scores": vars(trained.final_scores)}

    def write(tmp: Path) -> None:
        trained.model.save_pretrained(tmp, safe_serialization=True)
        (tmp / MEMBER_REPORT).write_text(json.dumps(report) + "\n")

    save_atomic(member_dir, write)
    # the saved member is all a resumed run needs; its trainer checkpoints (weights + optimizer) are not
    shutil.rmtree(slot.checkpoints_dir, ignore_errors=True)
    return report


def _stacked(scores: list[dict[str, Any]]) -> PairScores:
    """Each member's single-output scores ({chosen, rejected}: [pairs][1]) -> [pairs][members]."""
    return PairScores(chosen=[[m["chosen"][i][0] for m in scores] for i in range(len(scores[0]["chosen"]))],
                      rejected=[[m["rejected"][i][0] for m in scores] for i in range(len(scores[0]["rejected"]))])


def _link_tree(source: Path, target: Path, skip: set[str]) -> None:
    """Hard-link a member's files into the ensemble (a copy where the filesystem cannot link)."""
    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.name in skip or not path.is_file():
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
