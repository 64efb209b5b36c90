"""Tokens/s and peak memory of `trellis pretrain` against the HF Trainer on the same ~20M Llama, same batch.

    python benchmarks/bench_pretrain.py [--steps 8] [--batch 4] [--seq-len 128] [--threads 1] [--precision fp32]
                                        [--fast] [--fast-hf]

Each side runs in its own process (peak RSS is per process). Both train the same shape (Trellis writes
final/config.json; the HF side builds LlamaForCausalLM from it) with AdamW, the same lr, clipping,
batch and precision, for the same number of steps. Throughput is steady state: tokens of steps 2..N over
the wall time between the end of step 1 and the end of step N, taken from each trainer's own per-step
records (Trellis: metrics.jsonl with log_every=1; HF: a TrainerCallback at on_step_end).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = {"preset": "tiny", "hidden_size": 512, "num_layers": 6, "num_heads": 8, "num_kv_heads": 4,
         "intermediate_size": 1408, "max_seq_len": 512}
VOCAB = 4096


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_trellis(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from trellis.config.pretrain import PretrainConfig
    from trellis.config.world import WorldConfig
    from trellis.pretrain.trainer import pretrain
    from trellis.run import read_metrics

    cfg = PretrainConfig.model_validate({
        "model": SHAPE, "tokenizer": {"vocab_size": VOCAB}, "seq_len": args.seq_len, "batch_size": args.batch,
        "steps": args.steps, "warmup_steps": 1, "log_every": 1, "eval_every": 10**6, "eval_batches": 1,
        "save_every": 10**6, "precision": args.precision, "lr": 1e-3, "min_lr": 1e-4,
        "compile": args.fast, "fused_optimizer": args.fast,
    })
    pretrain(cfg, WorldConfig(), out)
    ends = [r["time"] for r in read_metrics(out / "pretrain" / "metrics.jsonl") if "loss" in r]
    tokens = (args.steps - 1) * args.batch * args.seq_len
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    return {"tokens_per_s": tokens / (ends[-1] - ends[0]), "params": summary["params"],
            "peak_rss_gb": _peak_rss_gb()}


def run_hf(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    config = LlamaConfig.from_pretrained(str(out / "pretrain" / "final"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n = args.steps * args.batch
    ids = torch.randint(0, config.vocab_size, (n, args.seq_len), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=str(out / "hf"), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=1e-3, weight_decay=0.1, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8,
        max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=1, logging_steps=10**6, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, bf16=args.precision == "bf16", fp16=False,
        dataloader_num_workers=0, disable_tqdm=True, seed=0,
        optim="adamw_torch_fused" if args.fast_hf else "adamw_torch", torch_compile=args.fast_hf,
    )
    Trainer(model=model, args=targs, train_dataset=data, callbacks=[StepTimes()]).train()
    tokens = (args.steps - 1) * args.batch * args.seq_len
    return {"tokens_per_s": tokens / (ends[-1] - ends[0]), "params": sum(p.numel() for p in model.parameters()),
            "peak_rss_gb": _peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--mode", choices=["both", "trellis", "hf"], default="both")
    parser.add_argument("--out", default=None)
    # --fast: Trellis with compile + fused AdamW; --fast-hf: the HF Trainer with the same two options
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--fast-hf", action="store_true")
    args = parser.parse_args()
    if args.mode != "both":
        result = (run_trellis if args.mode == "trellis" else run_hf)(args, Path(args.out))
        print("RESULT " + json.dumps(result), flush=True)
        return
    out = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TRELLIS_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    results = {}
    for mode in ("trellis", "hf"):
        cmd = [sys.executable, __file__, "--mode", mode, "--out", str(out), "--steps", str(args.steps),
               "--batch", str(args.batch), "--seq-len", str(args.seq_len), "--threads", str(args.threads),
               "--precision", args.precision] + (["--fast"] if args.fast else []) + \
            (["--fast-hf"] if args.fast_hf else [])
        proc = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        results[mode] = json.loads(line.removeprefix("RESULT "))
    print(json.dumps({
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "command": " ".join([sys.executable, *sys.argv]),
        "config": {"steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
                   "precision": args.precision, "fast": args.fast, "fast_hf": args.fast_hf, "shape": SHAPE},
        "trellis": results["trellis"], "hf_trainer": results["hf"],
        "tokens_per_s_ratio": results["trellis"]["tokens_per_s"] / results["hf"]["tokens_per_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
