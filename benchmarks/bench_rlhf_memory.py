"""The PPO update's peak GPU memory with and without `rlhf.offload_frozen`, on random models of a real shape.

    python benchmarks/bench_rlhf_memory.py --tokenizer SFT_DIR --device cuda [--hidden 576 --layers 30
        --heads 9 --kv-heads 3 --intermediate 1536] [--steps 3] [--out benchmarks/results/rlhf-memory-<date>.json]

The defaults are SmolLM2-135M's shape (with the tokenizer's vocabulary, which must have a chat template:
the quickstart SFT checkpoint's will do). Policy, reference, reward model and a value model initialised
from the reward model (TRL's layout), all fp32, random weights: memory does not depend on the values. For
each setting a fresh trainer runs `--steps` PPO steps; the figure is the largest `update_peak_memory_gb`
(CUDA's max allocated during the update phase). Offloading keeps the reference and reward model in host
memory outside the scoring pass, so the update should hold two fewer models. On a CPU the script only
checks that both settings run (there is no device memory to save).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"Tell me something about the number {i}." for i in range(64)]


def build_models(args: argparse.Namespace, root: Path) -> tuple[Path, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from trellis.checkpoint import load_tokenizer
    from trellis.data.chat_template import chat_stop_ids

    tokenizer = load_tokenizer(args.tokenizer)
    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, intermediate_size=args.intermediate,
                         vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=chat_stop_ids(tokenizer))
    torch.manual_seed(0)
    policy_dir, reward_dir = root / "policy", root / "reward"
    LlamaForCausalLM(config).save_pretrained(policy_dir)
    config.num_labels = 1
    LlamaForSequenceClassification(config).save_pretrained(reward_dir)
    for where in (policy_dir, reward_dir):
        tokenizer.save_pretrained(where)
    return policy_dir, reward_dir


def run_setting(args: argparse.Namespace, policy_dir: Path, reward_dir: Path, offload: bool) -> dict:
    import gc

    import torch

    from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer
    from trellis.config import RLHFConfig
    from trellis.data.chat_template import chat_stop_ids
    from trellis.rlhf.trainer import PPOTrainer

    device = torch.device(args.device)
    tokenizer = load_tokenizer(policy_dir)
    policy, ref = (load_causal_lm(policy_dir, device=device) for _ in range(2))
    for model in (policy, ref):
        model.generation_config.eos_token_id = chat_stop_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    reward, value = (load_reward_model(reward_dir, device=device) for _ in range(2))
    config = RLHFConfig(policy=str(policy_dir), reward_model=str(reward_dir), prompts="bench", steps=args.steps,
                        rollout_batch_size=args.batch, minibatch_size=args.batch, ppo_epochs=1,
                        max_new_tokens=args.new_tokens, device=args.device, offload_frozen=offload,
                        gold_eval=False, eval_initial=False)
    trainer = PPOTrainer(config, policy, ref, value, reward, tokenizer, [{"prompt": p} for p in PROMPTS], device)
    history = [trainer.train_step() for _ in range(args.steps)]
    out = {
        "offload_frozen": offload,
        "update_peak_memory_gb": max((h.get("update_peak_memory_gb", 0.0) for h in history), default=0.0) or None,
        "step_seconds": [round(h["step_seconds"], 3) for h in history],
        "rollout_seconds": [round(h["rollout_seconds"], 3) for h in history],
    }
    del trainer, policy, ref, reward, value
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", required=True, help="a checkpoint directory whose tokenizer has a chat template")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"rlhf-memory-{dt.date.today()}.json"))
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory(prefix="rlhf-memory-") as tmp:
        policy_dir, reward_dir = build_models(args, Path(tmp))
        results = []
        for offload in (False, True):
            start = time.perf_counter()
            results.append(run_setting(args, policy_dir, reward_dir, offload))
            results[-1]["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(results[-1]), flush=True)
        from trellis.checkpoint import load_causal_lm

        params = sum(p.numel() for p in load_causal_lm(policy_dir).parameters())
    base, off = (r["update_peak_memory_gb"] for r in results)
    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.machine(),
        "model": {"hidden": args.hidden, "layers": args.layers, "params_per_model": params},
        "settings": {"batch": args.batch, "new_tokens": args.new_tokens, "steps": args.steps},
        "runs": results,
        "update_peak_saved_gb": round(base - off, 3) if base and off else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("device", "model", "update_peak_saved_gb")}, indent=2))


if __name__ == "__main__":
    main()
