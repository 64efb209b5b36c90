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
BENCHMARKS = ("hellaswag", "mmlu", "truthfulqa")
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

    def describe(self) -> str:
        """What was found, for error messages: which benchmark files exist and which are missing."""
        subjects = sorted(set(self.mmlu_test) & set(self.mmlu_dev))
        return "; ".join([f"hellaswag: {self.hellaswag or 'no *hellaswag*.jsonl'}",
                          f"mmlu: {len(subjects)} subjects with <subject>_dev.csv and <subject>_test.csv",
                          f"truthfulqa: {self.truthfulqa or 'no mc_task.json'}"])

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


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise TrellisError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
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


def mmlu_description(subject: str, continuation: bool = False) -> str:
    # the rule of lm-eval's mmlu/_generate_configs.py; its continuation variant drops "multiple choice"
    kind = "questions" if continuation else "multiple choice questions"
    return f"The following are {kind} (with answers) about {' '.join(subject.split('_'))}.\n\n"


def _render(template: str, out: Path, **values: Any) -> None:
    # JSON strings and lists are valid YAML scalars, so any path or text is quoted safely
    text = string.Template((TEMPLATES / template).read_text()).substitute(
        {k: json.dumps(str(v) if isinstance(v, Path) else v) for k, v in values.items()})
    out.write_text(text)


def _slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", subject.lower()).strip("_")


def _task_name(prefix: str, base: str) -> str:
    return f"{prefix}_{base}" if prefix else base


def _first_rows(rows: list[dict[str, Any]], benchmark: str, subsample: dict[str, int]) -> list[dict[str, Any]]:
    return rows[: subsample[benchmark]] if benchmark in subsample else rows


def write_task_dir(data: TaskData, out_dir: str | Path, prefix: str = "world",
                   fewshot: dict[str, int] | None = None, subsample: dict[str, int] | None = None) -> list[str]:
    """Write the mirrors' YAML (and their data in the official schemas) under `out_dir`, for
    TaskManager(include_path=out_dir). Returns the task names written: world_hellaswag, world_mmlu, ...
    for prefix "world"; the official names (hellaswag, mmlu, truthfulqa_mc1, truthfulqa_mc2) for "".

    `fewshot` pins a task's num_fewshot in its YAML (e.g. {"world_mmlu": 5}); tasks not named keep the
    official default (0 for all four; truthfulqa ignores any request since its preamble is fixed).
    `subsample` keeps the first N evaluated documents of a benchmark ("hellaswag", "mmlu": N per subject,
    "truthfulqa"), written into the mirror's data so that any harness running the YAML sees the same set.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    official = official_tasks_dir()
    fewshot = fewshot or {}
    subsample = subsample or {}
    unknown = set(subsample) - set(BENCHMARKS)
    if unknown:
        raise TrellisError(f"eval.subsample: unknown benchmark {sorted(unknown)[0]!r} (known: {', '.join(BENCHMARKS)})")
    names: list[str] = []

    def pin(name: str, path: Path) -> None:
        if name in fewshot:
            with path.open("a") as fh:
                fh.write(f"num_fewshot: {int(fewshot[name])}\n")

    if data.hellaswag is not None:
        name = _task_name(prefix, "hellaswag")
        hellaswag = Path(data.hellaswag).resolve()
        if "hellaswag" in subsample:
            hellaswag = _write_jsonl(_first_rows(read_jsonl(hellaswag), "hellaswag", subsample),
                                     out / "data" / f"{name}.jsonl")
        _render("hellaswag.yaml", out / f"{name}.yaml", include=official / "hellaswag" / "hellaswag.yaml", name=name,
                hellaswag=hellaswag)
        pin(name, out / f"{name}.yaml")
        names.append(name)

    subjects = sorted(set(data.mmlu_test) & set(data.mmlu_dev))
    if subjects:
        group = _task_name(prefix, "mmlu")
        subtasks = []
        for subject in subjects:
            name = f"{group}_{_slug(subject)}"
            test = _write_jsonl(_first_rows(read_mmlu_csv(Path(data.mmlu_test[subject])), "mmlu", subsample),
                                out / "data" / f"{name}_test.jsonl")
            dev = _write_jsonl(read_mmlu_csv(Path(data.mmlu_dev[subject])), out / "data" / f"{name}_dev.jsonl")
            _render("mmlu_subject.yaml", out / f"{name}.yaml",
                    include=official / "mmlu" / "default" / "_default_template_yaml", name=name,
                    alias=subject.replace("_", " "), description=mmlu_description(subject), test=test, dev=dev)
            pin(group, out / f"{name}.yaml")
            subtasks.append(name)
        _render("mmlu_group.yaml", out / f"{group}.yaml", name=group, subtasks=subtasks)
        names.append(group)
        names.append(_write_mmlu_continuation(out, group, subjects, official, pin))

    if data.truthfulqa is not None:
        rows = _write_jsonl(_first_rows(read_truthfulqa_mc(Path(data.truthfulqa)), "truthfulqa", subsample),
                            out / "data" / f"{_task_name(prefix, 'truthfulqa')}.jsonl")
        for variant in ("mc1", "mc2"):
            name = _task_name(prefix, f"truthfulqa_{variant}")
            _render(f"truthfulqa_{variant}.yaml", out / f"{name}.yaml",
                    include=official / "truthfulqa" / f"truthfulqa_{variant}.yaml", name=name,
                    truthfulqa=rows)
            names.append(name)
    return names


def _write_mmlu_continuation(out: Path, group: str, subjects: list[str], official: Path, pin: Any) -> str:
    """lm-eval's `mmlu_continuation` on the same documents as `group`: "Question: ..\nAnswer:" scored on
    each option's text instead of its letter (the formulation small models are evaluated with, since
    matching a recalled answer to its letter only emerges at scale). Returns the group's name."""
    cont_group = f"{group}_continuation"
    subtasks = []
    for subject in subjects:
        letter_task = f"{group}_{_slug(subject)}"
        name = f"{letter_task}_continuation"
        _render("mmlu_subject.yaml", out / f"{name}.yaml",
                include=official / "mmlu" / "continuation" / "_continuation_template_yaml", name=name,
                alias=subject.replace("_", " "), description=mmlu_description(subject, continuation=True),
                test=out / "data" / f"{letter_task}_test.jsonl", dev=out / "data" / f"{letter_task}_dev.jsonl")
        pin(cont_group, out / f"{name}.yaml")
        subtasks.append(name)
    _render("mmlu_group.yaml", out / f"{cont_group}.yaml", name=cont_group, subtasks=subtasks)
    return cont_group


def check_task_names(requested: list[str], available: list[str], where: str = "eval.tasks", found: str = "") -> None:
    """Fail naming the first unknown task and listing what is available (and, given, which files were found)."""
    for name in requested:
        if name not in available:
            raise TrellisError(f"{where}: unknown task {name!r} (available: {', '.join(available) or 'none'})"
                               + (f"; {found}" if found else ""))


# -- running -------------------------------------------------------------------------------------------
def run_lm_eval(lm: Any, tasks: list[str], task_dir: str | Path | None, limit: int | float | None = None,
                num_fewshot: int | None = None, seed: int = 1234, log_samples: bool = False,
                fewshot: dict[str, int] | None = None) -> dict[str, Any]:
    """lm_eval.simple_evaluate on the mirrors in `task_dir`, or on lm-eval's official tasks (which read
    the Hugging Face hub) when `task_dir` is None; returns lm-eval's results dict.

    `fewshot` ({task: n}) is for the official tasks, whose YAML cannot be pinned: tasks are run in one
    simple_evaluate call per few-shot count and the results merged. `num_fewshot` overrides it.
    """
    from lm_eval.tasks import TaskManager

    if task_dir is None:
        manager = TaskManager()
        check_task_names(tasks, sorted(set(manager.all_tasks)))
    else:
        # the mirrors include official YAMLs by path, so the 9 s index of every official task is not needed
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    runs: dict[int | None, list[str]] = {}
    for task in tasks:
        n = num_fewshot if num_fewshot is not None or task_dir is not None else (fewshot or {}).get(task)
        runs.setdefault(n, []).append(task)
    merged: dict[str, Any] = {}
    for n, names in runs.items():
        results = _simple_evaluate(lm, names, manager, limit, n, seed, log_samples)
        for key, value in results.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key].update(value)
            else:
                merged.setdefault(key, value)
    return merged


def _simple_evaluate(lm: Any, tasks: list[str], manager: Any, limit: int | float | None, num_fewshot: int | None,
                     seed: int, log_samples: bool) -> dict[str, Any]:
    import lm_eval

    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
        log_samples=log_samples, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, bootstrap_iters=0)
    return results or {}  # simple_evaluate returns None on non-zero ranks


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
