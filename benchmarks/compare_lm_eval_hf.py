"""Per-sample comparison of `trellis eval` with `lm_eval --model hf` on the same task YAMLs.

Two steps:

  # 1. `trellis eval ...` unchanged, except that lm-eval's per-sample outputs are also written, one
  #    <task>.jsonl per task under --samples-dir, in the form `lm_eval --log_samples` writes them
  python benchmarks/compare_lm_eval_hf.py trellis --samples-dir DIR -- eval CONFIG --run-dir RUN --set ...

  # 2. match documents by (task, doc_id) against HFLM's samples_<task>_<date>.jsonl
  python benchmarks/compare_lm_eval_hf.py compare --hf HF_OUTPUT_PATH --trellis DIR --out result.json

The comparison reports, per task and per group of subtasks (e.g. mmlu = every mmlu_<subject>), the
documents compared (those both sides scored, when one ran a prefix with --limit), the largest |Δ log-likelihood| over every choice of every document, the number of
documents whose per-document metric (acc, acc_norm, mc2's probability mass) differs, and both sides'
metric means (lm-eval's aggregate for acc-style metrics: a document-weighted mean).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

METRIC_TOLERANCE = 1e-6  # per-document metrics are 0/1 for acc; mc2's mass is compared to this


def write_samples(samples: dict[str, list[dict[str, Any]]], out_dir: Path) -> None:
    """lm-eval's samples per task, serialised as its EvaluationTracker does (resps as strings)."""
    from lm_eval.utils import handle_non_serializable, sanitize_list

    out_dir.mkdir(parents=True, exist_ok=True)
    for task, rows in samples.items():
        with (out_dir / f"{task}.jsonl").open("w", encoding="utf-8") as fh:
            for row in rows:
                dumped = dict(row, resps=sanitize_list(row["resps"]),
                              filtered_resps=sanitize_list(row["filtered_resps"]), target=str(row["target"]))
                dumped.pop("arguments", None)  # the prompts are in doc + prompt_hash; keeps the files small
                fh.write(json.dumps(dumped, default=handle_non_serializable, ensure_ascii=False) + "\n")


def run_trellis(samples_dir: Path, trellis_argv: list[str]) -> int:
    """`trellis <argv>` with lm-eval asked for samples (metrics unchanged) and the samples saved."""
    import trellis.eval.tasks as tasks_module
    from trellis.cli import main

    original = tasks_module.run_lm_eval

    def run_lm_eval_saving_samples(*args: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs["log_samples"] = True
        results = original(*args, **kwargs)
        write_samples(results.get("samples", {}), samples_dir)
        return results

    tasks_module.run_lm_eval = run_lm_eval_saving_samples
    return main(trellis_argv)


def load_hf_samples(root: Path) -> dict[str, list[dict[str, Any]]]:
    """HFLM's samples_<task>_<date>.jsonl under `root` (any depth); the newest file of each task."""
    newest: dict[str, Path] = {}
    for path in sorted(root.rglob("samples_*.jsonl")):
        task = path.stem[len("samples_"):].rsplit("_", 1)[0]
        newest[task] = path  # sorted: a later date_id replaces an earlier one
    if not newest:
        raise SystemExit(f"{root}: no samples_<task>_<date>.jsonl (run lm_eval with --log_samples)")
    return {task: _read_jsonl(path) for task, path in newest.items()}


def load_trellis_samples(root: Path) -> dict[str, list[dict[str, Any]]]:
    files = sorted(root.glob("*.jsonl"))
    if not files:
        raise SystemExit(f"{root}: no <task>.jsonl (written by this script's `trellis` step)")
    return {path.stem: _read_jsonl(path) for path in files}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _logliks(sample: dict[str, Any]) -> list[float]:
    # filtered_resps of a loglikelihood task: one [loglik, is_greedy] per choice
    return [float(resp[0]) for resp in sample["filtered_resps"]]


def _metrics(sample: dict[str, Any]) -> dict[str, float]:
    return {name: float(sample[name]) for name in sample.get("metrics", []) if name in sample}


def compare_task(task: str, hf: list[dict[str, Any]], ours: list[dict[str, Any]]) -> dict[str, Any]:
    our_docs = {s["doc_id"]: s for s in ours}
    # one side may have run a prefix of the documents (--limit): compare the documents both scored
    hf_docs = {s["doc_id"]: s for s in hf if s["doc_id"] in our_docs}
    if not hf_docs:
        raise SystemExit(f"{task}: no document scored by both (HFLM {len(hf)}, Trellis {len(ours)})")
    max_delta, worst, requests = 0.0, None, 0
    metric_sums: dict[str, list[float]] = {}
    differs: dict[str, int] = {}
    for doc_id, hf_sample in hf_docs.items():
        ours_sample = our_docs[doc_id]
        if hf_sample["prompt_hash"] != ours_sample["prompt_hash"]:
            raise SystemExit(f"{task} doc {doc_id}: prompts differ (prompt_hash)")
        a, b = _logliks(hf_sample), _logliks(ours_sample)
        if len(a) != len(b):
            raise SystemExit(f"{task} doc {doc_id}: {len(a)} HFLM choices, {len(b)} Trellis choices")
        requests += len(a)
        for x, y in zip(a, b, strict=True):
            if abs(x - y) > max_delta:
                max_delta, worst = abs(x - y), doc_id
        m_hf, m_ours = _metrics(hf_sample), _metrics(ours_sample)
        for name, value in m_hf.items():
            sums = metric_sums.setdefault(name, [0.0, 0.0])
            sums[0] += value
            sums[1] += m_ours.get(name, float("nan"))
            if not abs(value - m_ours.get(name, float("nan"))) <= METRIC_TOLERANCE:
                differs[name] = differs.get(name, 0) + 1
    n = len(hf_docs)
    return {"docs": n, "docs_hflm": len(hf), "docs_trellis": len(ours), "requests": requests, "max_abs_delta_loglik": max_delta, "worst_doc": worst,
            "hflm": {k: v[0] / n for k, v in metric_sums.items()},
            "trellis": {k: v[1] / n for k, v in metric_sums.items()},
            "docs_metric_differs": {k: differs.get(k, 0) for k in metric_sums},
            "_sums": metric_sums}


def group_rows(rows: dict[str, dict[str, Any]], groups: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Document-weighted pooling of subtasks named <prefix>... into their group."""
    out = {}
    for group, prefix in groups.items():
        members = [t for t in rows if t.startswith(prefix)]
        if not members:
            continue
        docs = sum(rows[t]["docs"] for t in members)
        names = rows[members[0]]["_sums"].keys()
        out[group] = {
            "subtasks": len(members), "docs": docs, "requests": sum(rows[t]["requests"] for t in members),
            "max_abs_delta_loglik": max(rows[t]["max_abs_delta_loglik"] for t in members),
            "hflm": {k: sum(rows[t]["_sums"][k][0] for t in members) / docs for k in names},
            "trellis": {k: sum(rows[t]["_sums"][k][1] for t in members) / docs for k in names},
            "docs_metric_differs": {k: sum(rows[t]["docs_metric_differs"][k] for t in members) for k in names},
        }
    return out


def compare(hf_root: Path, trellis_root: Path, groups: dict[str, str]) -> dict[str, Any]:
    hf, ours = load_hf_samples(hf_root), load_trellis_samples(trellis_root)
    common = sorted(set(hf) & set(ours))
    if not common:
        raise SystemExit(f"no task in both: HFLM {sorted(hf)}, Trellis {sorted(ours)}")
    rows = {task: compare_task(task, hf[task], ours[task]) for task in common}
    grouped = group_rows(rows, groups)
    for row in rows.values():
        row.pop("_sums")
    return {"tasks": rows, "groups": grouped,
            "only_hflm": sorted(set(hf) - set(ours)), "only_trellis": sorted(set(ours) - set(hf)),
            "max_abs_delta_loglik": max(r["max_abs_delta_loglik"] for r in rows.values()),
            "docs_metric_differs": sum(sum(r["docs_metric_differs"].values()) for r in rows.values())}


def parse_groups(items: list[str]) -> dict[str, str]:
    groups = {}
    for item in items:
        name, sep, prefix = item.partition("=")
        if not sep or not name or not prefix:
            raise SystemExit(f"--group {item!r}: expected NAME=PREFIX, e.g. mmlu=mmlu_")
        groups[name] = prefix
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("trellis", help="run `trellis ARGS` and save lm-eval's per-sample outputs")
    run.add_argument("--samples-dir", type=Path, required=True)
    run.add_argument("trellis_args", nargs=argparse.REMAINDER, help="after --: the trellis command line")
    cmp = sub.add_parser("compare", help="compare HFLM --log_samples output with the saved Trellis samples")
    cmp.add_argument("--hf", type=Path, required=True, help="lm_eval's --output_path")
    cmp.add_argument("--trellis", type=Path, required=True, help="the `trellis` step's --samples-dir")
    cmp.add_argument("--group", action="append", default=["mmlu=mmlu_"], help="NAME=PREFIX of subtasks")
    cmp.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "trellis":
        trellis_args = args.trellis_args[1:] if args.trellis_args[:1] == ["--"] else args.trellis_args
        return run_trellis(args.samples_dir, trellis_args)
    result = compare(args.hf, args.trellis, parse_groups(args.group))
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
