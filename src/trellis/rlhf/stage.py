"""`trellis rlhf`: PPO of our own against a frozen reward model, with a frozen reference policy.

Roles: the policy (trained), the reference (the initial policy, frozen), the reward model (frozen) and a
critic: a value model initialised from the reward model (its score head read at every position), or with
`value_model: policy_head` a value head on the policy's own backbone (`value_warmup_rollouts` fits it on
rollouts of the initial policy before the first update). With `lora`, only adapters train and
the reference is the policy with its adapters disabled. Rollouts go through the project's serving engine.
Writes runs/<name>/rlhf/ through StageRun and resumes from its latest checkpoint. `algorithm: grpo | rloo`
hands the same inputs to TRL instead (trellis.rlhf.trl_algorithms).
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from trellis.config import RLHFConfig, WorldConfig
from trellis.data.chat_template import chat_stop_ids
from trellis.errors import TrellisError
from trellis.run import StageRun, save_atomic

log = logging.getLogger("trellis.rlhf")
FINAL_WINDOW = 5  # reward_mean_final: mean of this many last steps


def _world(world: WorldConfig, needed: bool) -> Any | None:
    try:
        from trellis.data.world import World
    except ImportError as exc:
        if needed:
            raise TrellisError(f"rlhf.prompts: 'world' needs trellis.data.world ({exc})") from None
        return None
    return World(world)


def gold_eval_of(model: Any, tokenizer: Any, world_obj: Any, config: RLHFConfig) -> dict[str, Any] | None:
    if world_obj is None or not config.gold_eval:
        return None
    from trellis.eval.gold import gold_eval

    return gold_eval(model, tokenizer, world_obj, list(world_obj.eval_prompts()),
                     max_new_tokens=config.eval_max_new_tokens, batch_size=config.generation_batch_size)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _summary(history: list[dict[str, float]], key: str) -> tuple[float | None, float | None]:
    values = [h[key] for h in history if key in h]
    if not values:
        return None, None
    return values[0], _mean(values[-FINAL_WINDOW:])


def axis_and_kl_summary(history: list[dict[str, float]], target_kl: float) -> dict[str, Any]:
    """Each reward head's mean, first step and last steps, and the per-step KL against `target_kl`."""
    out: dict[str, Any] = {}
    axes = sorted({k[len("reward_"):-len("_mean")] for h in history for k in h
                   if k.startswith("reward_") and k.endswith("_mean") and k != "reward_mean"})
    for axis in axes:
        out[f"reward_{axis}_initial"], out[f"reward_{axis}_final"] = _summary(history, f"reward_{axis}_mean")
    kls = [h["kl_mean"] for h in history if "kl_mean" in h]
    out.update(target_kl=target_kl, kl_max=max(kls, default=None),
               kl_steps_over_target=sum(kl > target_kl for kl in kls))
    return out


def run(config: RLHFConfig, world: WorldConfig, run_root: Path) -> Path:
    if config.policy is None:
        raise TrellisError("rlhf.policy: no policy checkpoint (set rlhf.policy or run the sft stage first)")
    if config.reward_model is None:
        raise TrellisError("rlhf.reward_model: no reward model (set rlhf.reward_model or run the reward stage)")
    if config.minibatch_size > config.rollout_batch_size:
        raise TrellisError(f"rlhf.minibatch_size: {config.minibatch_size} is larger than rollout_batch_size "
                           f"{config.rollout_batch_size}")

    import torch

    from trellis.checkpoint import check_checkpoint_dir, load_causal_lm, load_reward_model, load_tokenizer
    from trellis.device import resolve_device
    from trellis.rlhf.prompts import load_prompts
    from trellis.rlhf.samples import make_policy_samples
    from trellis.rlhf.trainer import TIMING_KEYS, PPOTrainer
    from trellis.rlhf.value_init import load_value_model

    check_checkpoint_dir(config.policy, need_tokenizer=True)
    check_checkpoint_dir(config.reward_model, need_tokenizer=False)
    world_obj = _world(world, needed=config.prompts == "world" or (config.ptx_coef > 0 and config.ptx_data == "world"))
    prompts = load_prompts(config.prompts, world_obj, config.reward_model)

    if config.algorithm != "ppo":
        from trellis.rlhf.trl_algorithms import run_trl_algorithm

        return run_trl_algorithm(config, prompts, world_obj, run_root)

    run = StageRun(run_root, "rlhf", config)
    try:
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        tokenizer = load_tokenizer(config.policy)
        if not tokenizer.chat_template:
            raise TrellisError(f"{config.policy}: tokenizer has no chat template (RLHF renders prompts as chat)")
        resume = run.latest_checkpoint()
        policy_dir = resume / "policy" if resume else Path(config.policy)
        value_dir = resume / "value" if resume else Path(config.reward_model)
        if config.lora is None:
            policy = load_causal_lm(policy_dir, device=device)
            ref_policy = load_causal_lm(config.policy, device=device)
            chat_models = [policy, ref_policy]
        else:
            from trellis.rlhf.lora import add_lora, load_lora_policy

            # the reference is the base weights, reached by disabling the adapters
            base = load_causal_lm(config.policy, device=device)
            chat_models, ref_policy = [base], None
        for model in chat_models:
            model.generation_config.eos_token_id = chat_stop_ids(tokenizer)
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        if config.lora is not None:
            policy = load_lora_policy(base, policy_dir) if resume else add_lora(base, config.lora)
        reward_model = load_reward_model(config.reward_model, device=device)
        value_model = load_value_model(value_dir, device=device) if config.value_model == "reward" else None
        for model in (reward_model, value_model):
            if model is not None:
                model.config.pad_token_id = tokenizer.pad_token_id

        trainer = PPOTrainer(config, policy, ref_policy, value_model, reward_model, tokenizer, prompts, device,
                             world_obj=world_obj)
        if resume is not None:
            trainer.load_state(resume)
            run.truncate_metrics_after(trainer.step)
            log.info("resuming RLHF from %s (step %d)", resume, trainer.step)
        samples = make_policy_samples(config, run, tokenizer, reward_model, device, prompts)
        frozen_on_device = trainer.offload.on_device  # samples are scored by the (maybe offloaded) reward model
        if samples is not None:
            with frozen_on_device():
                samples.start(policy, trainer.step if resume is not None else None)

        if resume is None and config.eval_initial:
            # a LoRA policy equals its reference before training (B = 0)
            with frozen_on_device():
                initial_gold = gold_eval_of(ref_policy if ref_policy is not None else policy, tokenizer, world_obj,
                                            config)
            if initial_gold is not None:
                trainer.meta["gold_score_initial"] = initial_gold["gold_score"]

        bar = run.progress(config.steps, desc="rlhf", initial=trainer.step)
        try:
            while trainer.step < config.steps:
                metrics = trainer.train_step()
                step = trainer.step
                if step % config.log_every == 0 or step == config.steps:
                    run.log(step, **metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl_mean']:.3f}",
                                gold=f"{metrics.get('gold_score', float('nan')):.3f}")
                if samples is not None and samples.due(step, config.steps):
                    with frozen_on_device():
                        samples.generate(policy, step)
                if config.save_every > 0 and step % config.save_every == 0 and step < config.steps:
                    save_atomic(run.checkpoint_path(step), trainer.save)
                    run.prune_checkpoints(config.keep_checkpoints)
        finally:
            bar.close()

        from trellis.rlhf.lora import merged_copy

        final_model = merged_copy(policy)  # LoRA: adapters folded in, a plain HF checkpoint
        run.save_final_model(final_model, tokenizer)
        gold = gold_eval_of(final_model, tokenizer, world_obj, config)

        history = trainer.history
        reward_initial, reward_final = _summary(history, "reward_mean")
        gold_sampled_initial, gold_sampled_final = _summary(history, "gold_score")
        summary: dict[str, Any] = {
            "steps": trainer.step,
            "episodes": trainer.step * config.rollout_batch_size,
            "reward_mean_initial": reward_initial,
            "reward_mean_final": reward_final,
            "kl_final": _summary(history, "kl_mean")[1],
            "kl_coef_final": trainer.kl_ctl.value,
            "kl_coef_max": max((h["kl_coef"] for h in history if "kl_coef" in h), default=None),
            "kl_horizon": getattr(trainer.kl_ctl, "horizon", None),
            "response_length_final": _summary(history, "response_length")[1],
            "gold_score_sampled_initial": gold_sampled_initial,
            "gold_score_sampled_final": gold_sampled_final,
            "reward_hacking_steps": sum(int(h.get("reward_hacking", 0.0)) for h in history),
        }
        for key in TIMING_KEYS:
            summary[f"{key}_mean"] = _mean([h[key] for h in history if key in h])
        if gold is not None:
            summary["gold_score"] = gold["gold_score"]
            summary["gold"] = {k: gold[k] for k in ("helpfulness", "harmlessness", "honesty", "n", "by_kind")}
            summary["gold_samples"] = gold["samples"]
        if "gold_score_initial" in trainer.meta:
            summary["gold_score_initial"] = trainer.meta["gold_score_initial"]
        summary.update(axis_and_kl_summary(history, config.target_kl))
        if samples is not None:
            with frozen_on_device():
                summary.update(samples.finish(final_model, trainer.step))
        run.write_summary(summary)
        return run.final_dir
    finally:
        run.close()
