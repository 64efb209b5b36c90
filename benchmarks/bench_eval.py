"""Loglikelihood scoring speed of the `trellis` lm-eval model against lm-eval's HFLM, same model, same requests.

    python benchmarks/bench_eval.py [--model PATH] [--data ../shared/data] [--tasks hellaswag,mmlu,truthfulqa_mc2]
                                    [--docs 100] [--mmlu-per-subject 20] [--num-fewshot 5]
                                    [--subjects anatomy,astronomy] [--batch-size 16] [--device cpu]
                                    [--models hflm,trellis] [--threads N]
                                    [--out benchmarks/results/eval-bench-<date>.json]

The local mirrors of shared/data (the official prompts: HellaSwag 0-shot, MMLU 5-shot, TruthfulQA's fixed
preamble) give each task's loglikelihood requests, built once by lm-eval. Both models score the same
`Instance` list with the same batch size in one process, HFLM first (so any warm-up favours the peer):
items/s = requests / wall seconds (CPU seconds of the process are recorded too: on a shared machine they
depend far less on the neighbours' load). Per-item log-likelihoods are compared (max absolute difference) and
so are the task's accuracies, computed by the task's own process_results from each model's outputs.
--docs keeps the first N documents of HellaSwag and TruthfulQA; MMLU keeps the first --mmlu-per-subject
test questions of each subject (of --subjects, all 57 by default) with --num-fewshot dev examples (the
official first-n preamble, the same for every question of a subject). Per model it also records the
tokens the model ran (padding included, counted at the input embedding), the positions projected onto
the vocabulary and the peak resident memory of the process while that model scored.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def build_requests(data_dir: Path, tasks: list[str], docs: int | None, per_subject: int,
                   subjects: list[str] | None = None, num_fewshot: int = 5) -> dict[str, Any]:
    """{task: (lm-eval task objects, their Instances)} from the local mirrors."""
    from lm_eval.tasks import TaskManager

    from trellis.eval.tasks import TaskData, write_task_dir

    subsample = {"mmlu": per_subject}
    if docs:
        subsample.update(hellaswag=docs, truthfulqa=docs)
    task_dir = Path(tempfile.mkdtemp(prefix="bench-eval-tasks-"))
    data = TaskData.find(data_dir)
    if subjects:
        unknown = sorted(set(subjects) - set(data.mmlu_test))
        if unknown:
            sys.exit(f"bench_eval: --subjects: unknown MMLU subject {unknown[0]!r} (known: {', '.join(sorted(data.mmlu_test))})")
        data.mmlu_test = {name: data.mmlu_test[name] for name in subjects}
    write_task_dir(data, task_dir, prefix="", fewshot={"mmlu": num_fewshot}, subsample=subsample)
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    out = {}
    for name in tasks:
        leaves = _leaves(manager.load_task_or_group([name]))
        instances = []
        for task in leaves.values():
            task.set_fewshot_seed(seed=1234)
            task.build_all_requests(rank=0, world_size=1)
            instances += task.instances
        out[name] = (leaves, instances)
    return out


def _leaves(loaded: dict) -> dict:
    out = {}
    for key, value in loaded.items():
        out.update(_leaves(value) if isinstance(value, dict) else {key: value})
    return out


def accuracy(leaves: dict, instances: list, scores: list[tuple[float, bool]]) -> float:
    """The task's own metric ('acc') averaged over its documents, from one model's outputs."""
    by_doc: dict[tuple[str, int], list] = {}
    for inst, score in zip(instances, scores, strict=True):
        by_doc.setdefault((inst.task_name, inst.doc_id), []).append((inst.idx, score))
    accs = []
    for (task_name, doc_id), outs in by_doc.items():
        task = leaves[task_name]
        doc = task.eval_docs[doc_id]
        result = task.process_results(doc, [s for _, s in sorted(outs, key=lambda t: t[0])])
        accs.append(float(result["acc"]))
    return sum(accs) / len(accs)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def peak_rss(every_s: float = 0.02) -> Iterator[dict[str, int]]:
    """{'before': resident set size at the start, 'peak': the highest seen while the block runs} (sampled:
    ru_maxrss is the whole process's)."""
    seen = {"before": rss_bytes(), "peak": rss_bytes()}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every_s):
            seen["peak"] = max(seen["peak"], rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        seen["peak"] = max(seen["peak"], rss_bytes())


def timed(lm: Any, instances: list, model: Any) -> dict[str, Any]:
    """Scores, wall seconds, input tokens the model ran (padding included) and peak RSS of one model."""
    import torch

    counted = [0]
    hook = model.get_input_embeddings().register_forward_hook(
        lambda module, args, out: counted.__setitem__(0, counted[0] + args[0].numel()))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    try:
        with peak_rss() as rss:
            t0, cpu0 = time.perf_counter(), time.process_time()
            scores = lm.loglikelihood(instances, disable_tqdm=True)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        hook.remove()
    return {"scores": scores, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": counted[0],
            "rss_before_gib": rss["before"] / 1024**3, "peak_rss_gib": rss["peak"] / 1024**3}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="checkpoint dir (default: SmolLM2-135M-Instruct, converted once)"
    )
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tasks", default="hellaswag,mmlu,truthfulqa_mc2")
    p.add_argument("--docs", type=int, default=100, help="first N documents of hellaswag/truthfulqa (0: all)")
    p.add_argument("--mmlu-per-subject", type=int, default=20, help="first N test questions of each subject")
    p.add_argument("--num-fewshot", type=int, default=5, help="MMLU few-shot examples (first n of dev)")
    p.add_argument("--subjects", default=None, help="comma-separated MMLU subjects (default: all 57)")
    p.add_argument("--models", default="hflm,trellis", help="which models to time (both: the comparison)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch
    from lm_eval.models.huggingface import HFLM

    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.eval.lm_model import TrellisLM

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model
    if model_dir is None:
        from trellis.convert.smollm2 import smollm2_checkpoint

        model_dir = str(smollm2_checkpoint())
    model = load_causal_lm(model_dir, device=torch.device(args.device)).eval()
    tokenizer = load_tokenizer(model_dir)
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=args.device)
    ours = TrellisLM(model=model, tokenizer=tokenizer, batch_size=args.batch_size)

    subjects = args.subjects.split(",") if args.subjects else None
    requests = build_requests(Path(args.data), args.tasks.split(","), args.docs or None, args.mmlu_per_subject,
                              subjects, args.num_fewshot)
    lms = {"hflm": hflm, "trellis": ours}
    chosen = [m for m in lms if m in args.models.split(",")]  # HFLM first when both
    rows = {}
    for name, (leaves, instances) in requests.items():
        row: dict[str, Any] = {"documents": len({(i.task_name, i.doc_id) for i in instances}),
                               "requests": len(instances)}
        runs = {}
        for which in chosen:
            runs[which] = run = timed(lms[which], instances, model)
            row.update({f"{which}_seconds": round(run["seconds"], 3),
                        f"{which}_items_per_s": round(len(instances) / run["seconds"], 2),
                        f"{which}_cpu_seconds": round(run["cpu_seconds"], 3),
                        f"{which}_tokens": run["tokens"],
                        f"{which}_ms_per_token": round(1000 * run["seconds"] / max(1, run["tokens"]), 4),
                        f"{which}_rss_before_gib": round(run["rss_before_gib"], 2),
                        f"{which}_peak_rss_gib": round(run["peak_rss_gib"], 2),
                        f"{which}_acc": accuracy(leaves, instances, run["scores"])})
        if "trellis" in runs:
            row["trellis_projected_positions"] = ours.scorer.projected_positions
            ours.scorer.projected_positions = 0
        if len(runs) == 2:
            got, ref = runs["trellis"]["scores"], runs["hflm"]["scores"]
            row["speedup"] = round(runs["hflm"]["seconds"] / runs["trellis"]["seconds"], 2)
            # on a shared machine wall time depends on the neighbours' load; CPU time much less
            row["cpu_speedup"] = round(runs["hflm"]["cpu_seconds"] / runs["trellis"]["cpu_seconds"], 2)
            row["max_abs_loglikelihood_diff"] = max(abs(a[0] - b[0]) for a, b in zip(got, ref, strict=True))
            row["greedy_flags_equal"] = all(a[1] == b[1] for a, b in zip(got, ref, strict=True))
        rows[name] = row
        print(name, json.dumps(row), flush=True)

    record = {
        "benchmark": "bench_eval",
        "date": dt.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "model": model_dir,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "mmlu": {"num_fewshot": args.num_fewshot, "per_subject": args.mmlu_per_subject,
                 "subjects": subjects or "all"},
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "tasks": rows,
    }
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"eval-bench-{record['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
