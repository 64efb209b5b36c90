"""GRPO and RLOO through TRL (`rlhf.algorithm: grpo | rloo`), as alternatives to Trellis's own PPO.

Both are critic-free: each prompt gets `num_generations` sampled completions and the group's other
rewards are the baseline. They use the same policy, reward model (through the same chat rendering as
PPO's scoring), prompts and run directory (config.yaml, metrics.jsonl, tb/, checkpoints/, final/,
summary.json with the keys the pipeline relies on). Mapping of the shared keys: steps -> max_steps,
rollout_batch_size -> completions per step, ppo_epochs -> num_iterations, kl_coef -> beta,
cliprange -> epsilon, max_new_tokens -> max_completion_length. TRL names its checkpoints
checkpoints/checkpoint-N and resumes from the last one.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from trellis.config import RLHFConfig
from trellis.errors import TrellisError
from trellis.run import StageRun

log = logging.getLogger("trellis.rlhf")
FINAL_WINDOW = 5
# TRL log key -> the PPO stage's metric name, so dashboards read both alike
METRIC_NAMES = {"reward": "reward_mean", "reward_std": "reward_std", "kl": "kl_mean",
                "completions/mean_length": "response_length", "entropy": "entropy",
                "rewards/gold_score/mean": "gold_score", "clip_ratio/region_mean": "clip_fraction"}


def check_config(config: RLHFConfig) -> None:
    if config.rollout_batch_size % config.num_generations:
        raise TrellisError(f"rlhf.num_generations: {config.num_generations} does not divide rollout_batch_size "
                           f"{config.rollout_batch_size} (each step samples whole groups)")
    if config.num_generations < 2:
        raise TrellisError("rlhf.num_generations: GRPO and RLOO need at least 2 completions per prompt")


def _text(item: Any) -> str:
    """The text of a conversational prompt/completion (a list of messages) or of a plain string."""
    if isinstance(item, list):
        return str(item[-1]["content"]) if item else ""
    return str(item)


def make_reward_function(reward_model: Any, tokenizer: Any, device: Any, batch_size: int):
    """TRL reward function: the reward model's score of the chat-rendered (prompt, completion)."""
    from trellis.rlhf.rollout import reward_scores

    def reward_model_score(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        scores = reward_scores(reward_model, tokenizer, [_text(p) for p in prompts],
                               [_text(c).strip() for c in completions], device, batch_size=batch_size)
        return [float(s) for s in scores]

    return reward_model_score


def make_gold_function(world_obj: Any):
    """The world's gold score, logged beside the reward (weight 0: it never trains the policy)."""

    def gold_score(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        return [float(world_obj.gold_score(_text(p), _text(c).strip())["overall"])
                for p, c in zip(prompts, completions, strict=True)]

    return gold_score


def trainer_args(config: RLHFConfig, output_dir: Path, device: Any) -> Any:
    from trl import GRPOConfig, RLOOConfig

    common = dict(
        output_dir=str(output_dir), max_steps=config.steps, per_device_train_batch_size=config.rollout_batch_size,
        gradient_accumulation_steps=1, num_generations=config.num_generations,
        max_completion_length=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        learning_rate=config.lr, lr_scheduler_type="constant", warmup_steps=0, beta=config.kl_coef,
        epsilon=config.cliprange, num_iterations=config.ppo_epochs, max_grad_norm=config.grad_clip,
        logging_steps=config.log_every, save_strategy="steps" if config.save_every > 0 else "no",
        save_steps=max(config.save_every, 1), save_total_limit=max(config.keep_checkpoints, 1),
        use_cpu=getattr(device, "type", str(device)) == "cpu", bf16=config.precision == "bf16",
        report_to=[], seed=config.seed, gradient_checkpointing=False, disable_tqdm=True,
    )
    return (GRPOConfig if config.algorithm == "grpo" else RLOOConfig)(**common)


def _log_callback(run: StageRun, history: list[dict[str, float]]):
    from transformers import TrainerCallback

    class ToRunLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any):
            if not logs or "reward" not in logs:
                return
            metrics = {METRIC_NAMES.get(k, k.replace("/", "_")): float(v) for k, v in logs.items()
                       if isinstance(v, int | float)}
            history.append(metrics)
            run.log(int(state.global_step), **metrics)

    return ToRunLog()


def _final_mean(history: list[dict[str, float]], key: str) -> tuple[float | None, float | None]:
    values = [h[key] for h in history if key in h]
    return (values[0], statistics.fmean(values[-FINAL_WINDOW:])) if values else (None, None)


def run_trl_algorithm(config: RLHFConfig, prompts: list[dict[str, Any]], world_obj: Any | None,
                      run_root: Path) -> Path:
    check_config(config)
    import torch
    from datasets import Dataset
    from transformers.trainer_utils import get_last_checkpoint
    from trl import GRPOTrainer, RLOOTrainer

    from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer
    from trellis.data.chat_template import chat_stop_ids
    from trellis.device import resolve_device
    from trellis.rlhf.lora import merged_copy
    from trellis.rlhf.stage import gold_eval_of

    run = StageRun(run_root, "rlhf", config)
    try:
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        tokenizer = load_tokenizer(config.policy)
        policy = load_causal_lm(config.policy, device=device)
        policy.generation_config.eos_token_id = chat_stop_ids(tokenizer)
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
        reward_model = load_reward_model(config.reward_model, device=device).eval().requires_grad_(False)
        reward_model.config.pad_token_id = tokenizer.pad_token_id

        resume = get_last_checkpoint(str(run.checkpoints_dir)) if run.checkpoints_dir.exists() else None
        initial_gold = None
        if resume is None and config.eval_initial:
            initial_gold = gold_eval_of(policy, tokenizer, world_obj, config)

        funcs: list[Any] = [make_reward_function(reward_model, tokenizer, device, config.forward_batch_size)]
        weights = [1.0]
        if world_obj is not None and config.prompts == "world":
            funcs.append(make_gold_function(world_obj))
            weights.append(0.0)
        args = trainer_args(config, run.checkpoints_dir, device)
        args.reward_weights = weights
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p["prompt"]}]} for p in prompts])
        peft_config = None
        if config.lora is not None:
            from peft import LoraConfig

            peft_config = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha,
                                     lora_dropout=config.lora.dropout, task_type="CAUSAL_LM",
                                     target_modules=list(config.lora.target_modules))
        history: list[dict[str, float]] = []
        trainer_cls = GRPOTrainer if config.algorithm == "grpo" else RLOOTrainer
        trainer = trainer_cls(model=policy, reward_funcs=funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[_log_callback(run, history)],
                              peft_config=peft_config)
        if resume is not None:
            run.truncate_metrics_after(int(Path(resume).name.split("-")[-1]))
            log.info("resuming %s from %s", config.algorithm, resume)
        trainer.train(resume_from_checkpoint=resume)

        final_model = merged_copy(trainer.model)
        final_model.generation_config.eos_token_id = chat_stop_ids(tokenizer)
        run.save_final_model(final_model, tokenizer)
        gold = gold_eval_of(final_model, tokenizer, world_obj, config)
        history = [dict(h) for h in run.read_metrics()]
        reward_initial, reward_final = _final_mean(history, "reward_mean")
        summary: dict[str, Any] = {
            "algorithm": config.algorithm,
            "steps": int(trainer.state.global_step),
            "episodes": int(trainer.state.global_step) * config.rollout_batch_size,
            "reward_mean_initial": reward_initial,
            "reward_mean_final": reward_final,
            "kl_final": _final_mean(history, "kl_mean")[1],
            "response_length_final": _final_mean(history, "response_length")[1],
            "gold_score_sampled_initial": _final_mean(history, "gold_score")[0],
            "gold_score_sampled_final": _final_mean(history, "gold_score")[1],
        }
        if gold is not None:
            summary["gold_score"] = gold["gold_score"]
            summary["gold"] = {k: gold[k] for k in ("helpfulness", "harmlessness", "honesty", "n", "by_kind")}
            summary["gold_samples"] = gold["samples"]
        if initial_gold is not None:
            summary["gold_score_initial"] = initial_gold["gold_score"]
        run.write_summary(summary)
        return run.final_dir
    finally:
        run.close()
