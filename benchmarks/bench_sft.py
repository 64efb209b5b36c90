"""SFT steps/s of `trellis sft` against plain TRL SFTTrainer on the same configuration, and peak memory of
LoRA against full fine-tuning.

    python benchmarks/bench_sft.py [--steps 30] [--batch 8] [--threads 1] [--model DIR] [--lora-r 16] [--repeats 2]

Each side runs in its own process (peak RSS is per process), on the same checkpoint, the same chat data
(loss on assistant tokens), the same batch, lr schedule, max_length and precision (fp32), with no eval
during the timed steps and one resumable checkpoint at their end (the stage always writes one; HF counts it
in train_runtime, so the peer writes it too). Steps/s is the Trainer's own `train_steps_per_second` on both sides
(median over --repeats runs, the sides alternating); peak memory is the process's peak RSS.
Without --model the checkpoint is a random Llama (hidden 512, 8 layers, ChatML tokenizer) written once.
TRL's own default turns activation checkpointing on; the peer turns it off, as Trellis does, so the two
run the same computation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _examples(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i % 17, i % 11
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": f"Please add {a} and {b}, and explain the steps you took in a sentence.",
                    },
                    {
                        "role": "assistant",
                        "content": f"Adding {a} and {b} gives {a + b}: I counted up from {a} by {b}.",
                    },
                ]
            }
        )
    return rows


def run_trellis(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from trellis.config import SFTConfig, WorldConfig
    from trellis.sft.stage import run

    lora = {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.0, "target_modules": LORA_TARGETS}
    cfg = SFTConfig(
        model=str(args.model),
        data=str(out / "data.jsonl"),
        max_steps=args.steps,
        batch_size=args.batch,
        lr=1e-4,
        warmup_ratio=0.1,
        logging_steps=10,
        save_steps=10**6,
        eval_fraction=0.0,
        max_length=args.max_length,
        device="cpu",
        lora=lora if args.lora else None,
    )
    # a fresh run directory per run: the stage would otherwise resume from the last one's checkpoint
    run_dir = Path(tempfile.mkdtemp(prefix="trellis-", dir=out))
    run(cfg, WorldConfig(), run_dir)
    summary = json.loads(
        (run_dir / "sft" / "summary.json").read_text()
    )
    return {
        "steps_per_s": summary["train_steps_per_second"],
        "runtime_s": summary["train_runtime_s"],
        "loss_final": summary["train_loss_final"],
        "peak_rss_gb": _peak_rss_gb(),
    }


def run_trl(args, out: Path) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
    rows = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
    # the loss mask a TRL user gets on this template: assistant tokens with {% generation %} markers,
    # otherwise prompt/completion rows and the loss on the completion (what Trellis does too)
    assistant_masks = "{% generation %}" in (tokenizer.chat_template or "")
    if not assistant_masks:
        rows = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows]
    data = Dataset.from_list(rows)
    targs = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-", dir=out),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,
        logging_steps=10,
        # as the Trellis stage: a resumable checkpoint at the end (HF counts it in train_runtime)
        save_strategy="steps",
        save_steps=10**6,
        save_total_limit=2,
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        max_length=args.max_length,
        assistant_only_loss=assistant_masks,
        completion_only_loss=None if assistant_masks else True,
        packing=False,
    )
    peft_config = (
        LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
        if args.lora
        else None
    )
    trainer = SFTTrainer(
        model=model, args=targs, train_dataset=data, processing_class=tokenizer, peft_config=peft_config
    )
    output = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps_per_s": output.metrics["train_steps_per_second"],
        "runtime_s": output.metrics["train_runtime"],
        "loss_final": losses[-1] if losses else None,
        "peak_rss_gb": _peak_rss_gb(),
    }


def _build_model(out: Path) -> Path:
    from trellis.sft.testing import build_tiny_chat_checkpoint

    return build_tiny_chat_checkpoint(out / "model", hidden=512, layers=8, vocab_size=2048)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--model", default=None, help="an HF chat checkpoint (default: a random 8-layer Llama)"
    )
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side (median steps/s)")
    parser.add_argument("--side", choices=["trellis", "trl"], default=None)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.side is not None:
        result = (run_trellis if args.side == "trellis" else run_trl)(args, Path(args.out))
        print("RESULT " + json.dumps(result), flush=True)
        return

    out = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    (out / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _examples(args.steps * args.batch)))
    model = Path(args.model).expanduser() if args.model else _build_model(out)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "TRELLIS_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {}
    # the two sides of a pair run back to back and swap order every repeat, so that a change in the shared
    # machine's load does not favour one side
    for repeat in range(args.repeats):
        for lora in (False, True):
            for side in ("trellis", "trl") if repeat % 2 == 0 else ("trl", "trellis"):
                cmd = [sys.executable, __file__, "--side", side, "--out", str(out), "--model", str(model),
                       "--steps", str(args.steps), "--batch", str(args.batch), "--max-length",
                       str(args.max_length), "--threads", str(args.threads), "--lora-r", str(args.lora_r)]
                proc = subprocess.run(cmd + (["--lora"] if lora else []), env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.exit(f"{side} (lora={lora}) failed:\n{proc.stderr[-3000:]}")
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
                record = json.loads(line.removeprefix("RESULT ")) | {"load_avg_1m_after": os.getloadavg()[0]}
                runs.setdefault(f"{side}_{'lora' if lora else 'full'}", []).append(record)
    results = {key: {"steps_per_s": statistics.median(r["steps_per_s"] for r in rs),
                     "peak_rss_gb": max(r["peak_rss_gb"] for r in rs), "runs": rs} for key, rs in runs.items()}
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "load_avg_before": load_before,
                "load_avg_after": os.getloadavg(),
                "command": " ".join(["python", "benchmarks/bench_sft.py", *sys.argv[1:]]),
                "model": str(model),
                "steps": args.steps,
                "batch": args.batch,
                "threads": args.threads,
                "repeats": args.repeats,
                **results,
                "ratio_full_trellis_over_trl": results["trellis_full"]["steps_per_s"]
                / results["trl_full"]["steps_per_s"],
                "ratio_lora_trellis_over_trl": results["trellis_lora"]["steps_per_s"]
                / results["trl_lora"]["steps_per_s"],
                "peak_rss_lora_over_full": results["trellis_lora"]["peak_rss_gb"]
                / results["trellis_full"]["peak_rss_gb"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
