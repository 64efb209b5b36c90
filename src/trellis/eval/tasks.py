"""Local mirrors of lm-eval's hellaswag, mmlu and truthfulqa_mc1/mc2 tasks.

Each mirror is a YAML file that `include`s the official task definition from the installed lm-eval and
replaces only where the data comes from, so its prompts, choices, few-shot sampling and metrics are the
official task's by construction. `TaskData` names the files (in the formats of the original releases:
HellaSwag jsonl, MMLU `<subject>_{dev,test}.csv`, TruthfulQA mc_task.json); the synthetic world writes
them, and the same code points at the real files under shared/data with another prefix.
"""

from __future__ import annotations

import csv
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

TEMPLATES = Path(__file__).parent / "tasks"
MMLU_LETTERS = ("A", "B", "C", "D")
SKIP_KEYS = {"alias", "sample_len", "sample_count", "name"}


@dataclass
class TaskData:
    """Where each benchmark's files are; None leaves that benchmark out."""

    hellaswag: Path | None = None  # jsonl, one HellaSwag item per line
    mmlu_dev: dict[str, Path] = field(default_factory=dict)  # subject -> <subject>_dev.csv
    mmlu_test: dict[str, Path] = field(default_factory=dict)  # subject -> <subject>_test.csv
    truthfulqa: Path | None = None  # mc_task.json

    @classmethod
    def find(cls, root: str | Path) -> TaskData:
        """Discover the files under `root` by their release names (World.write's layout or shared/data's)."""
        root = Path(root)
        if not root.is_dir():
            raise TrellisError(f"{root}: task data directory not found")
        hellaswag = sorted(p for p in root.rglob("*.jsonl") if "hellaswag" in str(p.relative_to(root)).lower())
        truthfulqa = sorted(root.rglob("mc_task.json"))
        return cls(
            hellaswag=hellaswag[0] if hellaswag else None,
            mmlu_dev={_subject(p, "dev"): p for p in sorted(root.rglob("*_dev.csv"))},
            mmlu_test={_subject(p, "test"): p for p in sorted(root.rglob("*_test.csv"))},
            truthfulqa=truthfulqa[0] if truthfulqa else None,
        )

    @classmethod
    def from_world_files(cls, files: dict[str, str | Path]) -> TaskData:
        """From World.write's {name: path}: its hellaswag, mmlu_dev, mmlu_test and truthfulqa entries."""
        paths = {k: Path(v) for k, v in files.items()}
        dev, test = paths.get("mmlu_dev"), paths.get("mmlu_test")
        return cls(
            hellaswag=paths.get("hellaswag"),
            mmlu_dev={_subject(dev, "dev"): dev} if dev else {},
            mmlu_test={_subject(test, "test"): test} if test else {},
            truthfulqa=paths.get("truthfulqa"),
        )


def _subject(path: Path, split: str) -> str:
    return path.name[: -len(f"_{split}.csv")]


# -- conversion to the schemas the official task definitions read -------------------------------------
def read_mmlu_csv(path: Path) -> list[dict[str, Any]]:
    """MMLU csv (no header: question, A, B, C, D, answer letter) -> cais/mmlu rows."""
    subject = _subject(path, path.stem.rsplit("_", 1)[-1])
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if len(row) != 6 or row[5].strip() not in MMLU_LETTERS:
                raise TrellisError(f"{path}:{lineno}: expected question,A,B,C,D,answer(A-D), got {len(row)} columns")
            rows.append({"question": row[0], "subject": subject, "choices": row[1:5],
                         "answer": MMLU_LETTERS.index(row[5].strip())})
    return rows


def read_truthfulqa_mc(path: Path) -> list[dict[str, Any]]:
    """mc_task.json ({answer: 0/1} dicts) -> HF truthful_qa multiple_choice rows ({choices, labels});
    answer order is kept, so the true answer stays first in mc1 as the official doc_to_target 0 needs."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TrellisError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    rows = []
    for i, item in enumerate(items):
        try:
            row = {"question": item["question"]}
            for key in ("mc1_targets", "mc2_targets"):
                targets = item[key]
                row[key] = {"choices": list(targets), "labels": [int(v) for v in targets.values()]}
        except (KeyError, TypeError, AttributeError) as exc:
            raise TrellisError(f"{path}: item {i} lacks question/mc1_targets/mc2_targets ({exc})") from None
        rows.append(row)
    return rows


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# -- task directory ------------------------------------------------------------------------------------
def official_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def mmlu_description(subject: str) -> str:
    # the rule of lm-eval's mmlu/_generate_configs.py
    return f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"


def _render(template: str, out: Path, **values: Any) -> None:
    # JSON strings and lists are valid YAML scalars, so any path or text is quoted safely
    text = string.Template((TEMPLATES / template).read_text()).substitute(
        {k: json.dumps(str(v) if isinstance(v, Path) else v) for k, v in values.items()})
    out.write_text(text)


def _slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", subject.lower()).strip("_")


def write_task_dir(data: TaskData, out_dir: str | Path, prefix: str = "world",
                   fewshot: dict[str, int] | None = None) -> list[str]:
    """Write the mirrors' YAML (and their data in the official schemas) under `out_dir`, for
    TaskManager(include_path=out_dir). Returns the task names written, e.g. world_hellaswag, world_mmlu.

    `fewshot` pins a task's num_fewshot in its YAML (e.g. {"world_mmlu": 5}); tasks not named keep the
    official default (0 for all four; truthfulqa ignores any request since its preamble is fixed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    official = official_tasks_dir()
    fewshot = fewshot or {}
    names: list[str] = []

    def pin(name: str, path: Path) -> None:
        if name in fewshot:
            with path.open("a") as fh:
                fh.write(f"num_fewshot: {int(fewshot[name])}\n")

    if data.hellaswag is not None:
        name = f"{prefix}_hellaswag"
        _render("hellaswag.yaml", out / f"{name}.yaml", include=official / "hellaswag" / "hellaswag.yaml", name=name,
                hellaswag=Path(data.hellaswag).resolve())
        pin(name, out / f"{name}.yaml")
        names.append(name)

    subjects = sorted(set(data.mmlu_test) & set(data.mmlu_dev))
    if subjects:
        group = f"{prefix}_mmlu"
        subtasks = []
        for subject in subjects:
            name = f"{group}_{_slug(subject)}"
            test = _write_jsonl(read_mmlu_csv(Path(data.mmlu_test[subject])), out / "data" / f"{name}_test.jsonl")
            dev = _write_jsonl(read_mmlu_csv(Path(data.mmlu_dev[subject])), out / "data" / f"{name}_dev.jsonl")
            _render("mmlu_subject.yaml", out / f"{name}.yaml",
                    include=official / "mmlu" / "default" / "_default_template_yaml", name=name,
                    alias=subject.replace("_", " "), description=mmlu_description(subject), test=test, dev=dev)
            pin(group, out / f"{name}.yaml")
            subtasks.append(name)
        _render("mmlu_group.yaml", out / f"{group}.yaml", name=group, subtasks=subtasks)
        names.append(group)

    if data.truthfulqa is not None:
        rows = _write_jsonl(read_truthfulqa_mc(Path(data.truthfulqa)), out / "data" / f"{prefix}_truthfulqa.jsonl")
        for variant in ("mc1", "mc2"):
            name = f"{prefix}_truthfulqa_{variant}"
            _render(f"truthfulqa_{variant}.yaml", out / f"{name}.yaml",
                    include=official / "truthfulqa" / f"truthfulqa_{variant}.yaml", name=name,
                    truthfulqa=rows)
            names.append(name)
    return names


def check_task_names(requested: list[str], available: list[str], where: str = "eval.tasks") -> None:
    """Fail naming the first unknown task and listing what is available."""
    for name in requested:
        if name not in available:
            raise TrellisError(f"{where}: unknown task {name!r} (available: {', '.join(available) or 'none'})")


# -- running -------------------------------------------------------------------------------------------
def run_lm_eval(lm: Any, tasks: list[str], task_dir: str | Path, limit: int | float | None = None,
                num_fewshot: int | None = None, seed: int = 1234, log_samples: bool = False) -> dict[str, Any]:
    """lm_eval.simple_evaluate on the mirrors in `task_dir`; returns lm-eval's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    # the mirrors include official YAMLs by path, so the 9 s index of every official task is not needed
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, bootstrap_iters=0)
    if results is None:  # simple_evaluate returns None on non-zero ranks
        return {}
    return results


def evaluate_tasks(lm: Any, tasks: list[str], data: TaskData, work_dir: str | Path, prefix: str = "world",
                   limit: int | float | None = None, num_fewshot: int | None = None,
                   fewshot: dict[str, int] | None = None) -> dict[str, Any]:
    """Write the mirrors for `data` into `work_dir`, check `tasks` against them, run lm-eval."""
    available = write_task_dir(data, work_dir, prefix=prefix, fewshot=fewshot)
    check_task_names(tasks, available)
    return run_lm_eval(lm, tasks, work_dir, limit=limit, num_fewshot=num_fewshot)


def metrics_table(results: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for the requested tasks (groups included), dropping stderr and filters."""
    merged = {**results.get("results", {}), **results.get("groups", {})}
    table: dict[str, dict[str, float]] = {}
    for task in tasks:
        row = {}
        for key, value in merged.get(task, {}).items():
            metric, _, _filter = key.partition(",")
            if metric.endswith("_stderr") or metric in SKIP_KEYS or not isinstance(value, int | float):
                continue
            row[metric] = float(value)
        table[task] = row
    return table
