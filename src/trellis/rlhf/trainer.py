"""The PPO loop: rollout -> score -> advantages -> epochs of minibatch policy and value updates."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trellis.config.rlhf import RLHFConfig
from trellis.rlhf import ppo
from trellis.rlhf.kl import make_kl_controller, resolve_kl_horizon
from trellis.rlhf.monitor import RewardHackingMonitor
from trellis.rlhf.prompts import PromptOrder
from trellis.rlhf.rollout import (
    Rollout,
    SequenceBatch,
    length_sorted_chunks,
    policy_outputs,
    response_logprobs,
    sample_responses,
    score_rollout,
    token_values,
)

log = logging.getLogger("trellis.rlhf")

STATE_FILE = "trainer_state.pt"
TIMING_KEYS = ("rollout_tokens_per_s", "episodes_per_s", "update_seconds", "rollout_seconds", "step_seconds",
               "generation_seconds", "update_tokens_per_s")


@dataclass
class MicroOutputs:
    """A micro-batch's policy outputs, [rows, response_len] each, graphs attached: log-probs, entropy (None
    when not trained on) and values (None until a separate value model's forward)."""

    logp: torch.Tensor
    entropy: torch.Tensor | None
    values: torch.Tensor | None


def resolve_micro_batch_size(requested: int | str, minibatch_size: int, device: Any) -> int:
    """Rows per forward/backward: `auto` is 8 on a CPU (less padding per length-sorted micro-batch) and
    the whole minibatch on an accelerator (fewer, larger kernel launches)."""
    if requested != "auto":
        return int(requested)
    return 8 if torch.device(device).type == "cpu" else minibatch_size


class PPOTrainer:
    """Owns the models (policy, reference or None for LoRA, critic, reward), the optimizers, the KL
    controller, the prompt order and the optional PPO-ptx stream."""

    def __init__(self, config: RLHFConfig, policy: Any, ref_policy: Any, value_model: Any, reward_model: Any,
                 tokenizer: Any, prompts: list[dict[str, Any]], device: Any, world_obj: Any | None = None,
                 engine: Any | None = None):
        from trellis.eval.gold import render_chat_prompt, stop_token_ids

        self.config = config
        self.policy, self.ref_policy = policy, ref_policy
        self.value_model, self.reward_model = value_model, reward_model
        self.tokenizer, self.device, self.world_obj = tokenizer, device, world_obj
        self.prompts = prompts
        self.prompt_ids = [render_chat_prompt(tokenizer, p["prompt"]) for p in prompts]
        self.stop_ids = stop_token_ids(policy, tokenizer)
        for frozen in (ref_policy, reward_model):
            if frozen is not None:
                frozen.eval().requires_grad_(False)
        from trellis.rlhf.offload import FrozenOffload

        self.offload = FrozenOffload([ref_policy, reward_model], device, config.offload_frozen)
        # PPO without dropout: the ratio of the first minibatch must be exactly 1
        policy.eval()
        self.micro_batch_size = resolve_micro_batch_size(config.micro_batch_size, config.minibatch_size, device)
        value_lr = config.value_lr or config.lr
        # one kernel per step over all tensors (CPU: 3.9 -> 1.8 ms per step of the quickstart policy)
        fused = torch.device(device).type in ("cpu", "cuda")
        # value_model None: a value head on the policy's backbone (one forward serves actor and critic)
        self.value_head = None
        self.value_optim: torch.optim.Optimizer | None = None
        self.policy_params = [p for p in policy.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": self.policy_params, "lr": config.lr}]
        if value_model is None:
            from trellis.rlhf.value_head import new_value_head

            self.value_head = new_value_head(policy, device, detach_input=config.value_head_detached)
            groups.append({"params": list(self.value_head.parameters()), "lr": value_lr})
        else:
            value_model.eval()
            self.value_optim = torch.optim.AdamW(value_model.parameters(), lr=value_lr, eps=1e-5, fused=fused)
        self.policy_optim = torch.optim.AdamW(groups, lr=config.lr, eps=1e-5, fused=fused)
        self.kl_ctl = make_kl_controller(config.kl_coef, config.adaptive_kl, config.target_kl,
                                         resolve_kl_horizon(config.kl_horizon, config.steps,
                                                            config.rollout_batch_size))
        self.order = PromptOrder(len(prompts), config.seed)
        self.monitor = RewardHackingMonitor(config.hacking_window, config.hacking_gold_drop)
        self.step = 0
        self.history: list[dict[str, float]] = []
        # numbers measured once (such as the initial gold score) that a resumed run must keep
        self.meta: dict[str, float] = {}
        if engine is None:
            from trellis.serving.engine import Engine

            engine = Engine(policy, tokenizer, max_batch_size=config.generation_batch_size,
                            lean_decode=config.lean_decode, cuda_graphs=config.cuda_graphs)
        self.engine = engine
        self.ptx = None
        if config.ptx_coef > 0:
            from trellis.rlhf.ptx import PtxStream

            self.ptx = PtxStream.from_config(config, tokenizer, world_obj, device)

    def autocast(self):
        """The precision of scoring and of the update (one context for both: old and new log-probs of the
        same tokens must come from the same arithmetic, or the first ratio is not 1)."""
        import contextlib

        if self.config.precision == "bf16":
            return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- one PPO iteration ------------------------------------------------------------------------------------
    def rollout(self, seed_step: int | None = None, policy_pass: bool = True) -> Rollout:
        """Sample and score a batch; `seed_step` (default: the current step) picks the sampling seeds.
        `policy_pass` False leaves the policy's log-probs, values and entropy to `first_pass`."""
        cfg = self.config
        idx = self.order.take(cfg.rollout_batch_size)
        prompt_ids = [self.prompt_ids[i] for i in idx]
        texts = [self.prompts[i]["prompt"] for i in idx]
        start = time.perf_counter()
        seed_step = self.step if seed_step is None else seed_step
        responses, ended = sample_responses(self.engine, prompt_ids, cfg.temperature, cfg.top_p,
                                            cfg.max_new_tokens, seed=(cfg.seed * 1_000_003 + seed_step) * 65_536,
                                            stop_token_ids=self.stop_ids)
        generation_seconds = time.perf_counter() - start
        with self.offload.on_device(), self.autocast():
            batch = score_rollout(self.policy, self.ref_policy, self.value_model, self.reward_model, self.tokenizer,
                                  texts, prompt_ids, responses, ended, cfg.temperature, self.device,
                                  forward_batch_size=cfg.forward_batch_size, value_head=self.value_head,
                                  policy_pass=policy_pass)
        batch.generation_seconds = generation_seconds
        batch.extra["items"] = [self.prompts[i] for i in idx]
        return batch

    def gold_metrics(self, batch: Rollout) -> dict[str, float]:
        if self.world_obj is None or self.config.prompts != "world":
            return {}
        from trellis.eval.gold import AXES, score_responses

        scored = score_responses(self.world_obj, batch.extra["items"], batch.responses)
        out = {"gold_score": scored["gold_score"]}
        for axis in AXES:
            if scored.get(axis) is not None:
                out[f"gold_{axis}"] = scored[axis]
        return out

    def overlong_penalties(self, batch: Rollout) -> torch.Tensor:
        """Each response's over-length penalty under this config (zeros when it is off)."""
        cfg = self.config
        return ppo.overlong_penalties(batch.response_lengths, cfg.max_new_tokens, cfg.overlong_buffer,
                                      cfg.overlong_penalty)

    def token_rewards(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(per-token KL, penalised scores, per-token rewards, the KL coefficient used) of a rollout."""
        cfg = self.config
        kl = ppo.kl_per_token(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator) * batch.mask
        scores = ppo.apply_missing_eos_penalty(batch.scores, batch.ended_with_eos, cfg.missing_eos_penalty)
        scores = scores - self.overlong_penalties(batch).to(scores.device)
        kl_coef = self.kl_ctl.value
        return kl, scores, ppo.compute_rewards(kl, scores, batch.mask, kl_coef), kl_coef

    def warm_up_value_head(self) -> None:
        """Fit the value head on `value_warmup_rollouts` rollouts of the initial policy (seeded apart from
        the training rollouts), so the first advantages have a baseline that knows the prompt."""
        from trellis.rlhf.value_head import fit_value_head

        cfg = self.config
        features, rewards, masks = [], [], []
        for i in range(cfg.value_warmup_rollouts):
            batch = self.rollout(seed_step=-1 - i)
            rewards.append(self.token_rewards(batch)[2])
            features.append(batch.extra["value_features"])
            masks.append(batch.mask)
        width = max(m.shape[1] for m in masks)

        def padded(parts: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]))
                              for p in parts])

        self.meta["value_warmup_mse"] = fit_value_head(self.value_head, padded(features), padded(rewards),
                                                       padded(masks), cfg.gamma, cfg.lam)

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        step_start = time.perf_counter()
        if (self.value_head is not None and cfg.value_warmup_rollouts and self.step == 0
                and "value_warmup_mse" not in self.meta):
            self.warm_up_value_head()
        batch = self.rollout(policy_pass=not cfg.fuse_scoring_pass)
        rollout_seconds = time.perf_counter() - step_start
        update_start = time.perf_counter()
        on_gpu = torch.device(self.device).type == "cuda"
        if on_gpu:  # the update's own memory peak (where offload_frozen helps), apart from the rollout's
            torch.cuda.reset_peak_memory_stats(self.device)
        first = self.first_pass(batch) if cfg.fuse_scoring_pass else None
        mask = batch.mask
        kl, scores, rewards, kl_coef = self.token_rewards(batch)
        advantages, returns = ppo.compute_gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = ppo.masked_whiten(advantages, mask)
        seq_kl = kl.sum(-1)

        stats = self.update(batch, advantages, returns, first)
        update_seconds = time.perf_counter() - update_start
        self.kl_ctl.update(float(seq_kl.mean()), cfg.rollout_batch_size)

        n_tokens = float(mask.sum())
        metrics: dict[str, float] = {
            "reward_mean": float(batch.scores.mean()),
            "reward_std": float(batch.scores.std()) if len(batch.scores) > 1 else 0.0,
            "score_penalized_mean": float(scores.mean()),
            **({"overlong_penalty_mean": float(self.overlong_penalties(batch).mean())}
               if cfg.overlong_penalty > 0 else {}),
            "eos_fraction": float(batch.ended_with_eos.float().mean()),
            "kl_mean": float(seq_kl.mean()),
            "kl_per_token": float(ppo.masked_mean(kl, mask)),
            "kl_coef": kl_coef,
            "non_score_reward": float((-kl_coef * seq_kl).mean()),
            "entropy": float(ppo.masked_mean(batch.entropy, mask)),
            "explained_variance": float(ppo.explained_variance(batch.values, returns, mask)),
            "value_mean": float(ppo.masked_mean(batch.values, mask)),
            "return_mean": float(ppo.masked_mean(returns, mask)),
            "response_length": float(batch.response_lengths.mean()),
            **stats,
            "rollout_tokens_per_s": n_tokens / max(batch.generation_seconds, 1e-9),
            "rollout_seconds": rollout_seconds,
            "generation_seconds": batch.generation_seconds,
            "update_seconds": update_seconds,
            # tokens (prompt + response) through the policy's forward and backward per second of update
            "update_tokens_per_s": float(batch.sequences.attention_mask.sum()) * cfg.ppo_epochs
            / max(update_seconds, 1e-9),
        }
        if on_gpu:
            metrics["update_peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        for axis, values in batch.extra.get("reward_per_axis", {}).items():
            metrics[f"reward_{axis}_mean"] = float(values.mean())
        gold = self.gold_metrics(batch)
        metrics.update(gold)
        if "gold_score" in gold and gold["gold_score"] is not None:
            metrics["reward_hacking"] = float(self.monitor.update(metrics["reward_mean"], gold["gold_score"]))
        self.step += 1
        metrics["step_seconds"] = time.perf_counter() - step_start
        metrics["episodes_per_s"] = cfg.rollout_batch_size / max(metrics["step_seconds"], 1e-9)
        self.history.append({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
        return metrics

    def policy_forward(self, seq: SequenceBatch, with_entropy: bool) -> MicroOutputs:
        """The policy's log-probs and entropy of a micro-batch's response tokens, with the values of the
        shared value head (a separate value model's come from `value_forward`)."""
        with self.autocast():
            if self.value_head is None:
                logp, entropy = response_logprobs(self.policy, seq, self.config.temperature, with_entropy)
                return MicroOutputs(logp, entropy, None)
            return MicroOutputs(*policy_outputs(self.policy, seq, self.config.temperature, with_entropy,
                                                self.value_head))

    def value_forward(self, seq: SequenceBatch) -> torch.Tensor:
        with self.autocast():
            return token_values(self.value_model, seq)

    def first_pass(self, batch: Rollout) -> list[tuple[torch.Tensor, MicroOutputs]]:
        """The first epoch's forward pass over the whole rollout, before any update: its outputs are the
        old log-probs, values and entropy (written into `batch`), and its graphs are kept for the first
        epoch's backward (`fuse_scoring_pass`). Returns (rows, outputs) per length-sorted micro-batch."""
        cfg = self.config
        lengths = batch.sequences.attention_mask.sum(-1)
        passes = []
        for chunk in length_sorted_chunks(lengths, self.micro_batch_size):
            rows = chunk.to(batch.mask.device)
            seq = batch.sequences.select(rows)
            rlen = seq.response_tokens.shape[1]
            out = self.policy_forward(seq, with_entropy=True)
            if out.values is None:
                out.values = self.value_forward(seq)
            batch.logprobs[rows, :rlen] = out.logp.detach().float()
            batch.entropy[rows, :rlen] = out.entropy.detach().float()
            batch.values[rows, :rlen] = out.values.detach().float()
            if cfg.entropy_coef <= 0:
                out.entropy = None
            passes.append((rows, out))
        return passes

    def update(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
               first: list[tuple[torch.Tensor, MicroOutputs]] | None = None) -> dict[str, float]:
        """`ppo_epochs` passes of minibatch updates; `first` (from `first_pass`) serves as the first epoch's
        forward pass (one minibatch: the whole rollout)."""
        cfg = self.config
        n = advantages.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (self.step + 1))
        sums: dict[str, float] = {}
        count = 0
        for epoch in range(cfg.ppo_epochs):
            # drawn in every epoch, so a fused run's later epochs see the same minibatch order as an unfused one
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.minibatch_size):
                rows = perm[start : start + cfg.minibatch_size]
                stats = self.update_minibatch(batch, advantages, returns, rows.to(advantages.device),
                                              first if epoch == 0 else None)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    def update_minibatch(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
                         rows: torch.Tensor,
                         precomputed: list[tuple[torch.Tensor, MicroOutputs]] | None = None) -> dict[str, float]:
        """One optimizer step of the policy and one of the value model on the minibatch `rows`.

        The minibatch runs as length-sorted micro-batches with gradient accumulation: each micro-batch is
        padded only to its own longest row, and each loss is weighted by its share of the minibatch's
        response tokens, so the gradient is the one of the whole minibatch's token mean. `precomputed`
        (the fused first epoch) gives the micro-batches and their forward outputs, graphs attached.
        """
        cfg = self.config
        if precomputed is None:
            lengths = batch.sequences.attention_mask[rows].sum(-1)
            micro_batches = [(rows[m.to(rows.device)], None) for m in length_sorted_chunks(lengths, self.micro_batch_size)]
        else:
            micro_batches = precomputed
        total_tokens = batch.mask[rows].sum().clamp(min=1)
        self.policy_optim.zero_grad(set_to_none=True)
        if self.value_optim is not None:
            self.value_optim.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}

        def add(key: str, value: torch.Tensor, weight: torch.Tensor) -> None:
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * float(weight)

        for micro, out in micro_batches:
            seq = batch.sequences.select(micro)
            rlen = seq.response_tokens.shape[1]
            mask = seq.response_mask
            weight = mask.sum() / total_tokens
            if out is None:
                out = self.policy_forward(seq, with_entropy=cfg.entropy_coef > 0)
            pg = ppo.policy_loss(out.logp, batch.logprobs[micro, :rlen], advantages[micro, :rlen], mask,
                                 cfg.cliprange)
            loss = pg.loss
            if out.entropy is not None:
                entropy_mean = ppo.masked_mean(out.entropy, mask)
                loss = loss - cfg.entropy_coef * entropy_mean
                add("entropy_update", entropy_mean, weight)
            old_values, micro_returns = batch.values[micro, :rlen], returns[micro, :rlen]
            if out.values is None:
                # a separate value model: the policy's graph is freed before the value model's forward
                (loss * weight).backward()
                vf = ppo.value_loss(self.value_forward(seq), old_values, micro_returns, mask, cfg.cliprange_value)
                (cfg.vf_coef * vf.loss * weight).backward()
            else:
                vf = ppo.value_loss(out.values, old_values, micro_returns, mask, cfg.cliprange_value)
                ((loss + cfg.vf_coef * vf.loss) * weight).backward()
            for key, value in (("policy_loss", pg.loss), ("clip_fraction", pg.clip_fraction),
                               ("approx_kl", pg.approx_kl), ("ratio_mean", pg.ratio_mean),
                               ("value_loss", vf.loss), ("value_clip_fraction", vf.clip_fraction)):
                add(key, value, weight)

        if self.ptx is not None:
            with self.autocast():
                sums["ptx_loss"] = self.ptx.backward(self.policy, cfg.ptx_coef)
        policy_grad_norm = torch.nn.utils.clip_grad_norm_(self.policy_params, cfg.grad_clip)
        critic = self.value_head if self.value_head is not None else self.value_model
        # clipped apart: a young critic's large gradients must not shrink the policy's step
        value_grad_norm = torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.grad_clip)
        self.policy_optim.step()
        if self.value_optim is not None:
            self.value_optim.step()
        return {**sums, "policy_grad_norm": float(policy_grad_norm), "value_grad_norm": float(value_grad_norm)}

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Policy and value as HF directories, everything else in one weights-only-loadable file."""
        self.policy.save_pretrained(directory / "policy")
        if self.value_model is not None:
            self.value_model.save_pretrained(directory / "value")
        state: dict[str, Any] = {
            "step": self.step,
            "prompt_position": self.order.position,
            "policy_optim": self.policy_optim.state_dict(),
            "value_optim": self.value_optim.state_dict() if self.value_optim is not None else {},
            "value_head": self.value_head.state_dict() if self.value_head is not None else {},
            "ptx": self.ptx.state_dict() if self.ptx is not None else {},
            "kl_ctl": self.kl_ctl.state_dict(),
            "monitor": self.monitor.state_dict(),
            "history": self.history,
            "meta": self.meta,
            "torch_rng": torch.get_rng_state(),
        }
        torch.save(state, directory / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        """Optimizers, KL controller, prompt position, RNG (the weights are loaded by the caller)."""
        state = torch.load(directory / STATE_FILE, weights_only=True, map_location="cpu")
        self.step = int(state["step"])
        self.order.position = int(state["prompt_position"])
        self.policy_optim.load_state_dict(state["policy_optim"])
        if self.value_optim is not None:
            self.value_optim.load_state_dict(state["value_optim"])
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        if self.ptx is not None and state.get("ptx"):
            self.ptx.load_state_dict(state["ptx"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.monitor.load_state_dict(state["monitor"])
        self.history = list(state["history"])
        self.meta = dict(state.get("meta", {}))
        torch.set_rng_state(state["torch_rng"])
