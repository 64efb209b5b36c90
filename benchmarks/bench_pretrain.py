"""Tokens/s, MFU and peak memory of `trellis pretrain` against the HF Trainer on the same Llama, same batch.

    python benchmarks/bench_pretrain.py [--steps 8] [--batch 4] [--seq-len 128] [--threads 1] [--precision fp32]
                                        [--fast] [--fast-hf] [--preset NAME] [--vocab-size N] [--skip 1] [--accum 1]
                                        [--attn auto|sdpa|eager] [--repeats 1]

Default shape: a ~20M Llama for this CPU. On a GPU, e.g. the ~1B preset with its published vocabulary:
    python benchmarks/bench_pretrain.py --preset llama3.2-1b --vocab-size 128256 --seq-len 2048 --batch 4 \
        --precision bf16 --fast --fast-hf --steps 20 --skip 5

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

SHAPE = {
    "preset": "tiny",
    "hidden_size": 512,
    "num_layers": 6,
    "num_heads": 8,
    "num_kv_heads": 4,
    "intermediate_size": 1408,
    "max_seq_len": 512,
}
VOCAB = 4096


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _memory() -> dict:
    import torch

    out = {"peak_rss_gb": round(_peak_rss_gb(), 3)}
    if torch.cuda.is_available():
        out["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def _shape(args) -> dict:
    if args.preset is None:
        return dict(SHAPE)
    return {"preset": args.preset, "max_seq_len": max(args.seq_len, 512)}


def _throughput(args, ends: list[float], model_config) -> dict:
    """Steady-state tokens/s over steps skip+1..N, and MFU against the GPU's table peak when on a GPU."""
    import torch

    from trellis.models.flops import mfu, peak_tflops_for, shape_from_hf_config, train_flops_per_token

    tokens = (len(ends) - args.skip) * args.batch * args.accum * args.seq_len
    tokens_per_s = tokens / (ends[-1] - ends[args.skip - 1])
    shape, vocab = shape_from_hf_config(model_config)
    flops = train_flops_per_token(shape, args.seq_len, vocab)
    out = {"tokens_per_s": tokens_per_s, "model_tflops": tokens_per_s * flops / 1e12}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = peak_tflops_for(name, args.precision)
        out["device"] = name
        if peak:
            out["peak_tflops"] = peak
            out["mfu"] = mfu(tokens_per_s, flops, peak * 1e12)
    return out


def run_trellis(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig

    from trellis.config.pretrain import PretrainConfig
    from trellis.config.world import WorldConfig
    from trellis.pretrain.trainer import pretrain
    from trellis.run import read_metrics

    cfg = PretrainConfig.model_validate(
        {
            "model": {
                **_shape(args),
                **({"vocab_size": args.vocab_size} if args.vocab_size else {}),
                "attn_implementation": args.attn,
            },
            "tokenizer": {"vocab_size": VOCAB},
            "seq_len": args.seq_len,
            "batch_size": args.batch * args.accum,
            "micro_batch_size": args.batch,
            "steps": args.steps,
            "warmup_steps": 1,
            "log_every": 1,
            "eval_every": 10**6,
            "eval_batches": 1,
            "save_every": 10**6,
            "precision": args.precision,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "compile": args.fast,
            "fused_optimizer": args.fast,
        }
    )
    pretrain(cfg, WorldConfig(), out)
    ends = [r["time"] for r in read_metrics(out / "pretrain" / "metrics.jsonl") if "loss" in r]
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    config = LlamaConfig.from_pretrained(str(out / "pretrain" / "final"))
    return {**_throughput(args, ends, config), "params": summary["params"], **_memory()}


def run_hf(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    config = LlamaConfig.from_pretrained(str(out / "pretrain" / "final"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    n = args.steps * args.batch * args.accum
    ids = torch.randint(0, config.vocab_size, (n, args.seq_len), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": row, "labels": row} for row in ids]
    ends: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *a, **k):
            ends.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=str(out / "hf"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.accum,
        learning_rate=1e-3,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        logging_steps=10**6,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        optim="adamw_torch_fused" if args.fast_hf else "adamw_torch",
        torch_compile=args.fast_hf,
    )
    Trainer(model=model, args=targs, train_dataset=data, callbacks=[StepTimes()]).train()
    return {
        **_throughput(args, ends, config),
        "params": sum(p.numel() for p in model.parameters()),
        **_memory(),
    }


def _side(mode: str, run_dir: Path, args, env: dict) -> dict:
    """One side's run in its own process: its RESULT, or an error entry (e.g. out of GPU memory)."""
    cmd = (
        [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--out",
            str(run_dir),
            "--steps",
            str(args.steps),
            "--batch",
            str(args.batch),
            "--seq-len",
            str(args.seq_len),
            "--threads",
            str(args.threads),
            "--precision",
            args.precision,
            "--skip",
            str(args.skip),
            "--accum",
            str(args.accum),
            "--attn",
            args.attn,
        ]
        + (["--fast"] if args.fast else [])
        + (["--fast-hf"] if args.fast_hf else [])
        + (["--preset", args.preset] if args.preset else [])
        + (["--vocab-size", str(args.vocab_size)] if args.vocab_size else [])
    )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(
            f"bench_pretrain: the {mode} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
            file=sys.stderr,
        )
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def _median_run(side_runs: list[dict]) -> dict:
    ok = sorted((r for r in side_runs if "error" not in r), key=lambda r: r["tokens_per_s"])
    return ok[(len(ok) - 1) // 2] if ok else side_runs[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    # micro-batches per optimizer step (--batch sequences each)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--mode", choices=["both", "trellis", "hf"], default="both")
    parser.add_argument("--out", default=None)
    # --fast: Trellis with compile + fused AdamW; --fast-hf: the HF Trainer with the same two options
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--fast-hf", action="store_true")
    # Trellis's attention kernel (model.attn_implementation, auto by default); the HF side keeps its default (sdpa)
    parser.add_argument("--attn", choices=["auto", "sdpa", "eager"], default="auto")
    # a named preset instead of the ~20M default shape, and an embedding table padded to this many rows
    parser.add_argument("--preset", default=None)
    parser.add_argument("--vocab-size", type=int, default=None)
    # steps left out of the steady state (compilation, allocator warm-up)
    parser.add_argument("--skip", type=int, default=1)
    # pairs of runs, alternating which side goes first; the summary takes each side's median run
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.mode != "both":
        result = (run_trellis if args.mode == "trellis" else run_hf)(args, Path(args.out))
        print("RESULT " + json.dumps(result), flush=True)
        return
    out = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TRELLIS_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    # each repeat runs both sides, alternating which goes first, so a drift in the machine's speed
    # (seen here: ±15% over minutes on a shared VM) does not favour one side; the Trellis run of repeat 0
    # writes the tokenizer and config.json that every HF run builds its model from
    runs: dict[str, list[dict]] = {"trellis": [], "hf": []}
    for repeat in range(args.repeats):
        for mode in ("trellis", "hf") if repeat % 2 == 0 else ("hf", "trellis"):
            run_dir = out / f"r{repeat}" if mode == "trellis" else out / "r0"
            result = _side(mode, run_dir, args, env)
            result["repeat"] = repeat
            runs[mode].append(result)
    results = {mode: _median_run(side_runs) for mode, side_runs in runs.items()}
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "command": " ".join([sys.executable, *sys.argv]),
                "config": {
                    "steps": args.steps,
                    "batch": args.batch,
                    "accum": args.accum,
                    "seq_len": args.seq_len,
                    "threads": args.threads,
                    "precision": args.precision,
                    "fast": args.fast,
                    "fast_hf": args.fast_hf,
                    "attn": args.attn,
                    "shape": _shape(args),
                    "vocab_size": args.vocab_size,
                    "skip": args.skip,
                },
                "trellis": results["trellis"],
                "hf_trainer": results["hf"],
                "tokens_per_s_ratio": results["trellis"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
                if "error" not in results["trellis"] and "error" not in results["hf"]
                else None,
                "repeats": args.repeats,
                "note": "trellis / hf_trainer: the run of median tokens/s over the repeats (all in runs)",
                "runs": runs,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
