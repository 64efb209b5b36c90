"""The PPO loop: rollout -> score -> advantages -> epochs of minibatch policy and value updates."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from trellis.config.rlhf import RLHFConfig
from trellis.rlhf import ppo
from trellis.rlhf.kl import make_kl_controller
from trellis.rlhf.prompts import PromptOrder
from trellis.rlhf.rollout import Rollout, response_logprobs, sample_responses, score_rollout, token_values

log = logging.getLogger("trellis.rlhf")

STATE_FILE = "trainer_state.pt"
TIMING_KEYS = ("rollout_tokens_per_s", "episodes_per_s", "update_seconds", "rollout_seconds", "step_seconds")


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


class RewardHackingMonitor:
    """Flags a window in which the reward model's score rises while the world's gold score falls."""

    def __init__(self, window: int, gold_drop: float):
        self.window, self.gold_drop = window, gold_drop
        self.rewards: list[float] = []
        self.golds: list[float] = []
        self.flagged = False

    def update(self, reward: float, gold: float) -> bool:
        self.rewards = (self.rewards + [reward])[-self.window:]
        self.golds = (self.golds + [gold])[-self.window:]
        if self.window < 2 or len(self.rewards) < self.window:
            return False
        span = self.window - 1
        rising = _slope(self.rewards) > 0
        falling = _slope(self.golds) * span < -self.gold_drop
        now = rising and falling
        if now and not self.flagged:
            log.warning("possible reward hacking: reward rose by %.3f while gold fell by %.3f over the last %d steps",
                        _slope(self.rewards) * span, -_slope(self.golds) * span, self.window)
        self.flagged = now
        return now

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": list(self.rewards), "golds": list(self.golds), "flagged": self.flagged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rewards = [float(x) for x in state["rewards"]]
        self.golds = [float(x) for x in state["golds"]]
        self.flagged = bool(state["flagged"])


class PPOTrainer:
    """Owns the four models, the two optimizers, the KL controller and the prompt order."""

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
            frozen.eval().requires_grad_(False)
        # PPO without dropout: the ratio of the first minibatch must be exactly 1
        policy.eval()
        value_model.eval()
        self.policy_optim = torch.optim.AdamW(policy.parameters(), lr=config.lr, eps=1e-5)
        self.value_optim = torch.optim.AdamW(value_model.parameters(), lr=config.value_lr or config.lr, eps=1e-5)
        self.kl_ctl = make_kl_controller(config.kl_coef, config.adaptive_kl, config.target_kl, config.kl_horizon)
        self.order = PromptOrder(len(prompts), config.seed)
        self.monitor = RewardHackingMonitor(config.hacking_window, config.hacking_gold_drop)
        self.step = 0
        self.history: list[dict[str, float]] = []
        # numbers measured once (such as the initial gold score) that a resumed run must keep
        self.meta: dict[str, float] = {}
        if engine is None:
            from trellis.serving.engine import Engine

            engine = Engine(policy, tokenizer, max_batch_size=config.generation_batch_size)
        self.engine = engine

    # -- one PPO iteration ------------------------------------------------------------------------------------
    def rollout(self) -> Rollout:
        cfg = self.config
        idx = self.order.take(cfg.rollout_batch_size)
        prompt_ids = [self.prompt_ids[i] for i in idx]
        texts = [self.prompts[i]["prompt"] for i in idx]
        start = time.perf_counter()
        responses, ended = sample_responses(self.engine, prompt_ids, cfg.temperature, cfg.top_p,
                                            cfg.max_new_tokens, seed=(cfg.seed * 1_000_003 + self.step) * 65_536,
                                            stop_token_ids=self.stop_ids)
        generation_seconds = time.perf_counter() - start
        batch = score_rollout(self.policy, self.ref_policy, self.value_model, self.reward_model, self.tokenizer,
                              texts, prompt_ids, responses, ended, cfg.temperature, self.device,
                              forward_batch_size=cfg.forward_batch_size)
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

    def train_step(self) -> dict[str, float]:
        cfg = self.config
        step_start = time.perf_counter()
        batch = self.rollout()
        rollout_seconds = time.perf_counter() - step_start
        mask = batch.mask
        kl = ppo.kl_per_token(batch.logprobs, batch.ref_logprobs, cfg.kl_estimator) * mask
        scores = ppo.apply_missing_eos_penalty(batch.scores, batch.ended_with_eos, cfg.missing_eos_penalty)
        kl_coef = self.kl_ctl.value
        rewards = ppo.compute_rewards(kl, scores, mask, kl_coef)
        advantages, returns = ppo.compute_gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = ppo.masked_whiten(advantages, mask)
        seq_kl = kl.sum(-1)

        update_start = time.perf_counter()
        stats = self.update(batch, advantages, returns)
        update_seconds = time.perf_counter() - update_start
        self.kl_ctl.update(float(seq_kl.mean()), cfg.rollout_batch_size)

        n_tokens = float(mask.sum())
        metrics: dict[str, float] = {
            "reward_mean": float(batch.scores.mean()),
            "reward_std": float(batch.scores.std()) if len(batch.scores) > 1 else 0.0,
            "score_penalized_mean": float(scores.mean()),
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
            "update_seconds": update_seconds,
        }
        gold = self.gold_metrics(batch)
        metrics.update(gold)
        if "gold_score" in gold and gold["gold_score"] is not None:
            metrics["reward_hacking"] = float(self.monitor.update(metrics["reward_mean"], gold["gold_score"]))
        self.step += 1
        metrics["step_seconds"] = time.perf_counter() - step_start
        metrics["episodes_per_s"] = cfg.rollout_batch_size / max(metrics["step_seconds"], 1e-9)
        self.history.append({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
        return metrics

    def update(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        n = advantages.shape[0]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * (self.step + 1))
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, cfg.minibatch_size):
                rows = perm[start : start + cfg.minibatch_size]
                stats = self.update_minibatch(batch, advantages, returns, rows.to(advantages.device))
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()}

    def update_minibatch(self, batch: Rollout, advantages: torch.Tensor, returns: torch.Tensor,
                         rows: torch.Tensor) -> dict[str, float]:
        cfg = self.config
        seq = batch.sequences.select(rows)
        rlen = seq.response_tokens.shape[1]
        mask = seq.response_mask
        old_logp = batch.logprobs[rows, :rlen]
        old_values = batch.values[rows, :rlen]
        adv, ret = advantages[rows, :rlen], returns[rows, :rlen]

        logp, entropy = response_logprobs(self.policy, seq, cfg.temperature, with_entropy=cfg.entropy_coef > 0)
        pg = ppo.policy_loss(logp, old_logp, adv, mask, cfg.cliprange)
        loss = pg.loss
        if entropy is not None:
            loss = loss - cfg.entropy_coef * ppo.masked_mean(entropy, mask)
        self.policy_optim.zero_grad(set_to_none=True)
        loss.backward()
        policy_grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.policy_optim.step()

        values = token_values(self.value_model, seq)
        vf = ppo.value_loss(values, old_values, ret, mask, cfg.cliprange_value)
        self.value_optim.zero_grad(set_to_none=True)
        (cfg.vf_coef * vf.loss).backward()
        value_grad_norm = torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), cfg.grad_clip)
        self.value_optim.step()
        return {
            "policy_loss": float(pg.loss.detach()),
            "clip_fraction": float(pg.clip_fraction),
            "approx_kl": float(pg.approx_kl),
            "ratio_mean": float(pg.ratio_mean),
            "value_loss": float(vf.loss.detach()),
            "value_clip_fraction": float(vf.clip_fraction),
            "policy_grad_norm": float(policy_grad_norm),
            "value_grad_norm": float(value_grad_norm),
        }

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Policy and value as HF directories, everything else in one weights-only-loadable file."""
        self.policy.save_pretrained(directory / "policy")
        self.value_model.save_pretrained(directory / "value")
        state = {
            "step": self.step,
            "prompt_position": self.order.position,
            "policy_optim": self.policy_optim.state_dict(),
            "value_optim": self.value_optim.state_dict(),
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
        self.value_optim.load_state_dict(state["value_optim"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.monitor.load_state_dict(state["monitor"])
        self.history = list(state["history"])
        self.meta = dict(state.get("meta", {}))
        torch.set_rng_state(state["torch_rng"])
