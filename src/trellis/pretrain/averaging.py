"""Weight averaging as callbacks: the mean of the checkpoints of the final X% of training, and an EMA.

Both keep fp32 copies of the weights in memory (on CPU), are saved in trainer_state.pt so a resumed
run averages exactly what an uninterrupted one would, and at the end write their own Hugging Face
checkpoint (averaged/, ema/) whose validation perplexity goes into summary.json beside the final one.
"""

from __future__ import annotations

from typing import Any

from trellis.pretrain.monitors import Callback, LoopContext, StepInfo


def _weights(model) -> dict[str, Any]:
    # state_dict keeps tied weights under both names; they stay equal, so that is harmless
    return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def average_state_dicts(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of several state dicts with the same keys."""
    out = {k: v.float().clone() for k, v in states[0].items()}
    for state in states[1:]:
        for k in out:
            out[k] += state[k].float()
    return {k: v / len(states) for k, v in out.items()}


class _WeightsCallback(Callback):
    summary_key = ""
    dir_name = ""

    def weights(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def on_train_end(self, ctx: LoopContext) -> dict[str, Any]:
        weights = self.weights()
        if weights is None:
            return {}
        finish = ctx.extras["finish_weights"]  # (name, weights) -> val ppl; writes the checkpoint
        return {self.summary_key: finish(self.dir_name, weights)}


class CheckpointAverage(_WeightsCallback):
    """Mean of the weights at every save step in the final `last_fraction` of steps, and at the last step."""

    name = "checkpoint_average"
    summary_key = "val_ppl_averaged"
    dir_name = "averaged"

    def __init__(self, last_fraction: float, save_every: int, total_steps: int) -> None:
        self.start = total_steps - last_fraction * total_steps
        self.save_every = save_every
        self.total_steps = total_steps
        self.sum: dict[str, Any] | None = None
        self.count = 0
        self.steps: list[int] = []

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        step = info.step
        if step < self.start or (step % self.save_every and step != self.total_steps):
            return {}
        current = _weights(ctx.model)
        if self.sum is None:
            self.sum = current
        else:
            for k, v in current.items():
                self.sum[k] += v
        self.count += 1
        self.steps.append(step)
        return {}

    def weights(self) -> dict[str, Any] | None:
        return None if self.sum is None else {k: v / self.count for k, v in self.sum.items()}

    def on_train_end(self, ctx: LoopContext) -> dict[str, Any]:
        out = super().on_train_end(ctx)
        return {**out, "averaged_steps": list(self.steps)} if out else out

    def state_dict(self) -> dict[str, Any]:
        return {"sum": self.sum or {}, "count": self.count, "steps": list(self.steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sum = dict(state["sum"]) or None
        self.count, self.steps = int(state["count"]), [int(s) for s in state["steps"]]


class EMA(_WeightsCallback):
    """ema = decay * ema + (1 - decay) * weights, after every optimizer step."""

    name = "ema"
    summary_key = "val_ppl_ema"
    dir_name = "ema"

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: dict[str, Any] | None = None

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        current = _weights(ctx.model)
        if self.ema is None:
            self.ema = current
        else:
            for k, v in current.items():
                self.ema[k].mul_(self.decay).add_(v, alpha=1.0 - self.decay)
        return {}

    def weights(self) -> dict[str, Any] | None:
        return self.ema

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema or {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = dict(state["ema"]) or None
