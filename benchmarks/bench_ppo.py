"""PPO peer benchmark: Trellis's PPO against trl==1.12.0's `trl.experimental.ppo.PPOTrainer`, on CPU or one GPU.

    python benchmarks/bench_ppo.py --policy SFT_DIR --reward-model REWARD_DIR [--episodes 1024]
        [--batch-size 32] [--minibatch-size 32] [--ppo-epochs 4] [--response-length 32] [--lr 1e-4]
        [--repeats 1] [--peers trellis,trl,trellis-shared-critic] [--micro-batch-size 8]
        [--precision fp32] [--device cpu|cuda] [--trl-path /tmp/trl112] [--out benchmarks/results/ppo-<date>.json]
        [--shared-critic-set KEY=VALUE ...] [--trellis-set KEY=VALUE ...]

Peers: `trellis` (separate value model initialised from the reward model, as TRL's), `trl`, and
`trellis-shared-critic` (value_model: policy_head, a value head on the policy's backbone; TRL 1.12's PPO
has no such option). `--shared-critic-set` / `--trellis-set` pass RLHFConfig fields to those two peers,
e.g. `--shared-critic-set value_warmup_rollouts=2` (the head fitted on 2 rollouts before the first update;
their time counts in the episodes/s). The summary gives medians over repeats; every repeat is under "runs"
with its rollout/update time split, the overrides it ran with, and the load average after it.

Without --policy/--reward-model it builds a tiny random chat policy (tests' recipe) and a reward model of
the same shape: the episodes/s are then meaningful, the reward gain is not.

TRL 1.12 is not a Trellis dependency: install it apart with
    pip install --no-deps --target /tmp/trl112 trl==1.12.0
and only the TRL child process puts that directory first on sys.path.

Both peers get the same policy, reward model (which also initialises the value model), training prompts
(the world's RLHF prompts, rendered as ChatML user turns), rollout batch size, minibatch size, response
length, temperature, PPO epochs, learning rate (constant), KL coefficient and estimator, clip ranges,
GAE parameters and missing-eos penalty. Each peer trains in its own subprocess, one after the other
(alternating over --repeats), with the same thread count; episodes/s is episodes / wall time of the
training loop (model loading and evaluation excluded); episodes/CPU-s divides by the CPU time of that loop
instead (less sensitive to a shared machine's other load). After training, both final policies are evaluated by
the same code: greedy answers (Trellis engine, same max tokens) to the same held-out prompts (the world's
eval prompts), scored by the same reward model and by the world's gold scorer. The reward gain is the
final policy's mean reward minus the initial policy's on those prompts.

Known differences that remain: TRL steps one AdamW over policy + value (loss = pg + vf_coef * vf, no
gradient clipping); Trellis steps two (clipped at grad_clip each). TRL stops on one eos id (<|im_end|>),
Trellis on the chat stop ids (<|im_end|>, <|endoftext|>). The train-time reward TRL logs scores raw token
ids, Trellis's the chat-rendered text; the held-out evaluation is the same code for both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# -- shared by both children ------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)


def _world():
    from trellis.config import WorldConfig
    from trellis.data.world import World

    return World(WorldConfig())


def _prompts(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    world = _world()
    train = list(world.rlhf_prompts())
    held_out = list(world.eval_prompts())[: args.eval_prompts]
    return train, held_out


def evaluate_policy(policy: Any, tokenizer: Any, reward_model: Any, held_out: list[dict],
                    max_new_tokens: int) -> dict[str, Any]:
    """Greedy answers through the Trellis engine, scored by the reward model and the world's gold scorer."""

    from trellis.eval.gold import generate_answers, score_responses
    from trellis.rlhf.rollout import reward_scores

    texts = [p["prompt"] for p in held_out]
    policy.eval()
    answers = generate_answers(policy, tokenizer, texts, max_new_tokens=max_new_tokens, batch_size=32)
    rewards = reward_scores(reward_model, tokenizer, texts, answers, next(reward_model.parameters()).device)
    gold = score_responses(_world(), held_out, answers)
    return {"reward_mean": float(rewards.mean()), "gold_score": gold["gold_score"], "n": len(texts),
            "samples": [{"prompt": t, "answer": a} for t, a in zip(texts[:3], answers[:3], strict=True)]}


def _load_frozen(args: argparse.Namespace) -> tuple[Any, Any]:
    from trellis.checkpoint import load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(args.policy)
    reward = load_reward_model(args.reward_model, device=args.device).eval().requires_grad_(False)
    reward.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, reward


# -- the Trellis child ------------------------------------------------------------------------------------
def _overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings (values read as YAML: 1e-3, true, ...) as RLHFConfig fields."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"bench_ppo: expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_trellis(args: argparse.Namespace, value_model: str) -> dict[str, Any]:
    import torch

    from trellis.checkpoint import load_causal_lm, load_reward_model
    from trellis.config import RLHFConfig
    from trellis.data.chat_template import chat_stop_ids
    from trellis.rlhf.trainer import PPOTrainer

    _set_threads(args.threads)
    train_prompts, held_out = _prompts(args)
    tokenizer, reward = _load_frozen(args)
    policy = load_causal_lm(args.policy, device=args.device)
    ref = load_causal_lm(args.policy, device=args.device)
    value = load_reward_model(args.reward_model, device=args.device) if value_model == "reward" else None
    for model in (policy, ref):
        model.generation_config.eos_token_id = chat_stop_ids(tokenizer)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if value is not None:
        value.config.pad_token_id = tokenizer.pad_token_id
    initial = evaluate_policy(policy, tokenizer, reward, held_out, args.response_length)

    config = RLHFConfig(
        policy=args.policy, reward_model=args.reward_model, prompts="bench", steps=args.episodes // args.batch_size,
        rollout_batch_size=args.batch_size, minibatch_size=args.minibatch_size, ppo_epochs=args.ppo_epochs,
        max_new_tokens=args.response_length, temperature=args.temperature, lr=args.lr, kl_coef=args.kl_coef,
        kl_estimator="k1", cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95,
        missing_eos_penalty=args.missing_eos_penalty, seed=args.seed, device=args.device,
        generation_batch_size=args.batch_size, forward_batch_size=args.micro_batch_size,
        micro_batch_size=args.micro_batch_size, precision=args.precision, value_model=value_model,
        **_overrides(args.trellis_set if value_model == "reward" else args.shared_critic_set),
    )
    trainer = PPOTrainer(config, policy, ref, value, reward, tokenizer, train_prompts, torch.device(args.device))
    history = []
    start, cpu_start = time.perf_counter(), time.process_time()
    while trainer.step < config.steps:
        history.append(trainer.train_step())
    _sync(args.device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    final = evaluate_policy(policy, tokenizer, reward, held_out, args.response_length)
    keys = ("generation_seconds", "rollout_seconds", "update_seconds", "step_seconds")
    return {
        "peer": "trellis" if value_model == "reward" else "trellis-shared-critic", "episodes": trainer.step * args.batch_size, "train_seconds": seconds,
        "episodes_per_s": trainer.step * args.batch_size / seconds, "cpu_seconds": cpu_seconds,
        "episodes_per_cpu_s": trainer.step * args.batch_size / cpu_seconds,
        "time_split": {k: statistics.fmean(h[k] for h in history) for k in keys},
        "train_reward_first": history[0]["reward_mean"], "train_reward_last": history[-1]["reward_mean"],
        "kl_last": history[-1]["kl_mean"],
        "initial": initial, "final": final, "reward_gain": final["reward_mean"] - initial["reward_mean"],
        "gold_gain": _diff(final["gold_score"], initial["gold_score"]),
        "config_overrides": _overrides(args.trellis_set if value_model == "reward" else args.shared_critic_set),
        "value_warmup_mse": trainer.meta.get("value_warmup_mse"),
    }


# -- the TRL child ----------------------------------------------------------------------------------------
def run_trl(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, args.trl_path)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    if not trl.__file__.startswith(args.trl_path):
        raise SystemExit(f"expected trl from {args.trl_path}, got {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer, ppo_trainer

    # time TRL's rollout generation (its own module-level helper) to split rollout from update
    generation_seconds = [0.0]
    batch_generation = ppo_trainer.batch_generation

    def timed_batch_generation(*a, **k):
        t0 = time.perf_counter()
        try:
            return batch_generation(*a, **k)
        finally:
            generation_seconds[0] += time.perf_counter() - t0

    ppo_trainer.batch_generation = timed_batch_generation

    from trellis.eval.gold import render_chat_prompt

    _set_threads(args.threads)
    train_prompts, held_out = _prompts(args)
    tokenizer, reward = _load_frozen(args)
    policy = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32).to(args.device)
    ref = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32).to(args.device)
    value = AutoModelForSequenceClassification.from_pretrained(args.reward_model, num_labels=1,
                                                               dtype=torch.float32).to(args.device)
    for model in (value, reward):
        model.config.pad_token_id = tokenizer.pad_token_id
    initial = evaluate_policy(policy, tokenizer, reward, held_out, args.response_length)

    tokenizer.padding_side = "left"  # TRL generates from left-padded queries
    ids = [render_chat_prompt(tokenizer, p["prompt"]) for p in train_prompts]
    dataset = Dataset.from_dict({"input_ids": ids})
    config = PPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-ppo-"), use_cpu=args.device == "cpu", bf16=args.precision == "bf16",
        report_to=[],
        save_strategy="no", num_sample_generations=0, disable_tqdm=True, logging_steps=1, seed=args.seed,
        # the rollout batch is one minibatch (main() insists): TRL takes one optimizer step per
        # `gradient_accumulation_steps` microbatches, so smaller minibatches would not step per minibatch
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, num_mini_batches=1,
        total_episodes=args.episodes, local_rollout_forward_batch_size=args.batch_size,
        num_ppo_epochs=args.ppo_epochs, response_length=args.response_length, temperature=args.temperature,
        learning_rate=args.lr, lr_scheduler_type="constant", kl_coef=args.kl_coef, kl_estimator="k1",
        cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, stop_token="eos",
        missing_eos_penalty=args.missing_eos_penalty, whiten_rewards=False,
    )
    history: list[dict[str, float]] = []

    class Keep(TrainerCallback):
        def on_log(self, _args, _state, _control, logs=None, **_):
            if logs and "objective/scores" in logs:
                history.append(dict(logs))

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=reward, value_model=value, train_dataset=dataset,
                         eval_dataset=dataset.select(range(args.batch_size)), callbacks=[Keep()])
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.train()
    _sync(args.device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    episodes = int(trainer.state.episode)
    tokenizer.padding_side = "right"
    final = evaluate_policy(policy, tokenizer, reward, held_out, args.response_length)
    return {
        "peer": f"trl=={trl.__version__}", "episodes": episodes, "train_seconds": seconds,
        "episodes_per_s": episodes / seconds, "optimizer": "one AdamW over policy+value (HF Trainer)",
        "cpu_seconds": cpu_seconds, "episodes_per_cpu_s": episodes / cpu_seconds,
        "time_split": {"generation_seconds": generation_seconds[0] / max(len(history), 1),
                       "step_seconds": seconds / max(len(history), 1)},
        "train_reward_first": history[0]["objective/scores"] if history else None,
        "train_reward_last": history[-1]["objective/scores"] if history else None,
        "kl_last": history[-1]["objective/kl"] if history else None,
        "initial": initial, "final": final, "reward_gain": final["reward_mean"] - initial["reward_mean"],
        "gold_gain": _diff(final["gold_score"], initial["gold_score"]),
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# -- the parent -------------------------------------------------------------------------------------------
def build_tiny_models(root: Path) -> tuple[str, str]:
    """A random 2-layer chat policy and a reward model on the same backbone config (throughput only)."""
    import torch
    from transformers import AutoConfig, LlamaForSequenceClassification

    from trellis.sft.testing import build_tiny_chat_checkpoint

    policy_dir = build_tiny_chat_checkpoint(root / "policy", seed=0)
    cfg = AutoConfig.from_pretrained(policy_dir)
    cfg.num_labels = 1
    torch.manual_seed(1)
    reward = LlamaForSequenceClassification(cfg)
    reward.save_pretrained(root / "reward")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(root / "reward")
    return str(policy_dir), str(root / "reward")


def _child(role: str, args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_path = f.name
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRELLIS_NO_PROGRESS="1")
    cmd = [sys.executable, __file__, *argv, "--role", role, "--result", result_path,
           "--policy", args.policy, "--reward-model", args.reward_model]
    print(f"[bench_ppo] {role} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env=env, cwd=ROOT)
    if proc.returncode != 0:
        return {"peer": role, "error": f"exit {proc.returncode}"}
    return json.loads(Path(result_path).read_text())


def _device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy")
    parser.add_argument("--reward-model")
    parser.add_argument("--episodes", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--minibatch-size", type=int, default=32)
    parser.add_argument("--ppo-epochs", type=int, default=4)
    parser.add_argument("--micro-batch-size", type=int, default=8,
                        help="Trellis only: rows per forward/backward (length-sorted gradient accumulation)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="forward/backward precision of both peers (bf16: autocast, fp32 master weights)")
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both peers train (one GPU)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--peers", default="trellis,trl,trellis-shared-critic",
                        help="peers to run, in this order (trellis-shared-critic: Trellis with "
                             "value_model=policy_head; TRL 1.12 always uses a separate value model)")
    parser.add_argument("--trellis-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an RLHFConfig field for the `trellis` peer (repeatable)")
    parser.add_argument("--shared-critic-set", action="append", default=[], metavar="KEY=VALUE",
                        help="an RLHFConfig field for the `trellis-shared-critic` peer (repeatable), e.g. "
                             "value_head_detached=true value_warmup_rollouts=1 value_lr=1e-3")
    parser.add_argument("--trl-path", default="/tmp/trl112")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"ppo-{dt.date.today()}.json"))
    parser.add_argument("--role", choices=["trellis", "trl", "trellis-shared-critic"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.minibatch_size != args.batch_size:
        # TRL 1.12 can only take one optimizer step per minibatch when the minibatch is the rollout batch
        # (see run_trl); a smaller minibatch would compare different numbers of optimizer steps
        parser.error("--minibatch-size must equal --batch-size for a like-for-like comparison with TRL 1.12")
    if args.role:
        if args.role == "trl":
            result = run_trl(args)
        else:
            result = run_trellis(args, "reward" if args.role == "trellis" else "policy_head")
        Path(args.result).write_text(json.dumps(result))
        return

    built = None
    if not args.policy or not args.reward_model:
        built = tempfile.mkdtemp(prefix="bench-ppo-models-")
        args.policy, args.reward_model = build_tiny_models(Path(built))
    argv = [a for a in sys.argv[1:]]
    for flag in ("--policy", "--reward-model"):
        if flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
    load_before = _loadavg()
    runs: list[dict[str, Any]] = []
    peers = args.peers.split(",")
    for repeat in range(args.repeats):
        order = peers if repeat % 2 == 0 else peers[::-1]
        for role in order:
            result = _child(role, args, argv)
            result["repeat"] = repeat
            result["load_after"] = _loadavg()
            runs.append(result)

    def median(peer: str, key: str) -> float | None:
        values = [r[key] for r in runs if r.get("peer", "").split("==")[0] == peer and key in r]
        return statistics.median(values) if values else None

    names = list(dict.fromkeys(peers))
    eps = {p: median(p, "episodes_per_s") for p in names}
    theirs = eps.get("trl")
    # CPU time of the training process: on a shared machine less sensitive to the other load than wall time
    cpu_eps = {p: median(p, "episodes_per_cpu_s") for p in names}
    cpu_theirs = cpu_eps.get("trl")
    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "device": _device_name(args.device),
                    "loadavg_before": load_before, "loadavg_after": _loadavg()},
        "models": {"policy": args.policy, "reward_model": args.reward_model, "built_random": built is not None},
        "settings": {k: getattr(args, k) for k in ("episodes", "batch_size", "minibatch_size", "ppo_epochs",
                                                   "response_length", "temperature", "lr", "kl_coef",
                                                   "micro_batch_size", "precision",
                                                   "missing_eos_penalty", "eval_prompts", "seed",
                                                   "trellis_set", "shared_critic_set")},
        "episodes_per_s": eps,
        "speedup_vs_trl": {p: eps[p] / theirs for p in names if p != "trl" and eps[p] and theirs},
        "episodes_per_cpu_s": cpu_eps,
        "cpu_speedup_vs_trl": {p: cpu_eps[p] / cpu_theirs for p in names
                               if p != "trl" and cpu_eps[p] and cpu_theirs},
        "reward_gain": {p: median(p, "reward_gain") for p in names},
        "gold_gain": {p: median(p, "gold_gain") for p in names},
        "runs": runs,
    }
    summary["note"] = "medians over repeats; every repeat is in runs"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("episodes_per_s", "speedup_vs_trl", "cpu_speedup_vs_trl", "reward_gain",
                                              "gold_gain", "machine")}, indent=2))


if __name__ == "__main__":
    main()
