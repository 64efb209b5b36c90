"""Loglikelihood scoring speed of the `trellis` lm-eval model against lm-eval's HFLM, same model, same requests.

    python benchmarks/bench_eval.py [--model PATH] [--data ../shared/data] [--tasks hellaswag,mmlu,truthfulqa_mc2]
                                    [--docs 100] [--mmlu-per-subject 20] [--mmlu-subjects N] [--batch-size 16]
                                    [--device cpu]
                                    [--threads N] [--out benchmarks/results/eval-bench-<date>.json]

The local mirrors of shared/data (the official prompts: HellaSwag 0-shot, MMLU 5-shot, TruthfulQA's fixed
preamble) give each task's loglikelihood requests, built once by lm-eval. Both models score the same
`Instance` list with the same batch size in one process, HFLM first (so any warm-up favours the peer):
items/s = requests / wall seconds. Per-item log-likelihoods are compared (max absolute difference) and
so are the task's accuracies, computed by the task's own process_results from each model's outputs.
--docs keeps the first N documents of HellaSwag and TruthfulQA; MMLU keeps --mmlu-per-subject per subject
(of the first --mmlu-subjects subjects in alphabetical order, all 57 by default).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def build_requests(data_dir: Path, tasks: list[str], docs: int | None, per_subject: int,
                   subjects: int | None = None) -> dict[str, Any]:
    """{task: (lm-eval task objects, their Instances)} from the local mirrors."""
    from lm_eval.tasks import TaskManager

    from trellis.eval.tasks import TaskData, write_task_dir

    subsample = {"mmlu": per_subject}
    if docs:
        subsample.update(hellaswag=docs, truthfulqa=docs)
    task_dir = Path(tempfile.mkdtemp(prefix="bench-eval-tasks-"))
    data = TaskData.find(data_dir)
    if subjects:
        data.mmlu_test = dict(sorted(data.mmlu_test.items())[:subjects])
    write_task_dir(data, task_dir, prefix="", fewshot={"mmlu": 5}, subsample=subsample)
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


def timed(lm: Any, instances: list) -> tuple[list[tuple[float, bool]], float]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    scores = lm.loglikelihood(instances, disable_tqdm=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return scores, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default=None, help="checkpoint dir (default: SmolLM2-135M-Instruct, converted once)"
    )
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--tasks", default="hellaswag,mmlu,truthfulqa_mc2")
    p.add_argument("--docs", type=int, default=100, help="first N documents of hellaswag/truthfulqa (0: all)")
    p.add_argument("--mmlu-per-subject", type=int, default=20)
    p.add_argument("--mmlu-subjects", type=int, default=None)
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

    requests = build_requests(
        Path(args.data), args.tasks.split(","), args.docs or None, args.mmlu_per_subject
    )
    rows = {}
    for name, (leaves, instances) in requests.items():
        ref, t_ref = timed(hflm, instances)
        got, t_ours = timed(ours, instances)
        diff = max(abs(a[0] - b[0]) for a, b in zip(got, ref, strict=True))
        greedy_same = all(a[1] == b[1] for a, b in zip(got, ref, strict=True))
        rows[name] = {
            "documents": len({(i.task_name, i.doc_id) for i in instances}),
            "requests": len(instances),
            "hflm_seconds": round(t_ref, 3),
            "trellis_seconds": round(t_ours, 3),
            "hflm_items_per_s": round(len(instances) / t_ref, 2),
            "trellis_items_per_s": round(len(instances) / t_ours, 2),
            "speedup": round(t_ref / t_ours, 2),
            "max_abs_loglikelihood_diff": diff,
            "greedy_flags_equal": greedy_same,
            "hflm_acc": accuracy(leaves, instances, ref),
            "trellis_acc": accuracy(leaves, instances, got),
        }
        print(name, json.dumps(rows[name]), flush=True)

    record = {
        "benchmark": "bench_eval",
        "date": dt.date.today().isoformat(),
        "command": " ".join(sys.argv),
        "model": model_dir,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
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
