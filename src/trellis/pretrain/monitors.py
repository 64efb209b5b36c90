"""Training monitors as callbacks: the loop calls their hooks and logs what they return.

Hooks (all optional): on_step_begin(ctx, step) before the step's forward, on_grads(ctx, step) once the
gradients are final (unscaled, not yet clipped), on_step_end(ctx, info) -> metrics. Metrics returned
on a log step go into that step's record; on other steps into a record of their own. A callback with
state_dict()/load_state_dict() is saved in checkpoints and restored on resume; on_train_end(ctx) ->
summary entries.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from trellis.models.flops import peak_tflops_for


@dataclass
class LoopContext:
    model: Any                      # the module being trained (unwrapped)
    optimizer: Any
    device: Any
    precision: str
    log_every: int
    total_steps: int
    flops_per_token: Any            # seq_len -> training FLOPs per token
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepInfo:
    step: int                       # 1-based: the step just finished
    tokens: int
    seconds: float
    seq_len: int
    loss: float
    grad_norm: float
    is_log_step: bool


class Callback:
    name = "callback"

    def on_step_begin(self, ctx: LoopContext, step: int) -> None:
        pass

    def on_grads(self, ctx: LoopContext, step: int) -> None:
        pass

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        return {}

    def on_train_end(self, ctx: LoopContext) -> dict[str, Any]:
        return {}


class GradGroupNorms(Callback):
    """Gradient norm of each optimizer group (decay: matrices, no_decay: norm gains), before clipping."""

    name = "grad_norm_groups"
    GROUP_NAMES = ("decay", "no_decay")

    def __init__(self) -> None:
        self._norms: dict[str, float] = {}

    def on_grads(self, ctx: LoopContext, step: int) -> None:
        import torch

        if step % ctx.log_every and step != ctx.total_steps:
            return
        self._norms = {}
        for i, group in enumerate(ctx.optimizer.param_groups):
            grads = [p.grad for p in group["params"] if p.grad is not None]
            name = self.GROUP_NAMES[i] if i < len(self.GROUP_NAMES) else f"group{i}"
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])) \
                if grads else torch.tensor(0.0)
            self._norms[f"grad_norm.{name}"] = float(norm)

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        out, self._norms = self._norms, {}
        return out


def decoder_layers(model) -> list:
    inner = getattr(model, "model", model)
    return list(getattr(inner, "layers", []))


class ActivationStats(Callback):
    """Per-layer RMS and max |x| of each decoder block's output, every `every` steps, through forward hooks
    (first micro-batch of the step only)."""

    name = "activations"

    def __init__(self, every: int) -> None:
        self.every = every
        self._handles: list = []
        self._stats: dict[str, float] = {}

    def on_step_begin(self, ctx: LoopContext, step: int) -> None:
        if step % self.every:
            return
        self._stats = {}
        for i, layer in enumerate(decoder_layers(ctx.model)):
            self._handles.append(layer.register_forward_hook(self._hook(i)))

    def _hook(self, index: int):
        def record(module, args, output) -> None:
            key = f"act_rms.{index}"
            if key in self._stats:
                return
            hidden = (output[0] if isinstance(output, tuple) else output).detach().float()
            self._stats[key] = float(hidden.pow(2).mean().sqrt())
            self._stats[f"act_max.{index}"] = float(hidden.abs().max())
        return record

    def on_grads(self, ctx: LoopContext, step: int) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        out, self._stats = self._stats, {}
        return out


def cpu_peak_tflops(dtype_name: str = "fp32", size: int = 512, repeats: int = 5) -> float:
    """A CPU's matmul peak, measured: the best of a few [size x size] matmuls, in TFLOP/s."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    b = a.clone()
    torch.mm(a, b)  # warm the kernels
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * size**3 / best / 1e12


class Throughput(Callback):
    """Model FLOPs per token, achieved TFLOP/s and MFU against a stated peak, over each log window."""

    name = "mfu"

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak = peak_tflops
        self.peak_source = "config" if peak_tflops else None
        self._flops = 0.0
        self._seconds = 0.0

    def _resolve_peak(self, ctx: LoopContext) -> float:
        if self.peak is None:
            if ctx.device.type == "cuda":
                import torch

                name = torch.cuda.get_device_name(ctx.device)
                self.peak, self.peak_source = peak_tflops_for(name, ctx.precision), f"table:{name}"
            if self.peak is None:
                self.peak, self.peak_source = cpu_peak_tflops(ctx.precision if ctx.device.type == "cpu" else "fp32"), \
                    "matmul probe"
        return self.peak

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        fpt = ctx.flops_per_token(info.seq_len)
        self._flops += fpt * info.tokens
        self._seconds += info.seconds
        if not info.is_log_step:
            return {}
        peak = self._resolve_peak(ctx)
        tflops = self._flops / max(self._seconds, 1e-9) / 1e12
        self._flops, self._seconds = 0.0, 0.0
        return {"flops_per_token": fpt, "tflops": tflops, "mfu": tflops / peak, "peak_tflops": peak}

    def on_train_end(self, ctx: LoopContext) -> dict[str, Any]:
        return {"peak_tflops": self.peak, "peak_source": self.peak_source} if self.peak else {}


def peak_memory_gb(device) -> float:
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**30
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Memory(Callback):
    """Peak memory: CUDA max allocated on a GPU, the process's max resident set on CPU."""

    name = "memory"

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        if not info.is_log_step:
            return {}
        key = "cuda_max_allocated_gb" if ctx.device.type == "cuda" else "max_rss_gb"
        return {key: peak_memory_gb(ctx.device)}

    def on_train_end(self, ctx: LoopContext) -> dict[str, Any]:
        return {"peak_memory_gb": round(peak_memory_gb(ctx.device), 3)}


class CommTime(Callback):
    """Seconds spent in DDP's gradient all-reduce (from launch to completion of each bucket, overlapping
    the backward pass) per log window, and its share of the step time. Only under torchrun."""

    name = "communication"

    def __init__(self) -> None:
        self._seconds = 0.0
        self._step_seconds = 0.0
        self._installed = False

    def _install(self, ddp) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def timed(state, bucket):
            start = time.perf_counter()

            def done(fut):
                self._seconds += time.perf_counter() - start
                return fut.value()

            return allreduce_hook(state, bucket).then(done)

        ddp.register_comm_hook(None, timed)
        self._installed = True

    def on_step_begin(self, ctx: LoopContext, step: int) -> None:
        ddp = ctx.extras.get("ddp")
        if ddp is not None and not self._installed:
            self._install(ddp)

    def on_step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        self._step_seconds += info.seconds
        if not info.is_log_step or not self._installed:
            return {}
        out = {"comm_s": self._seconds, "comm_fraction": self._seconds / max(self._step_seconds, 1e-9)}
        self._seconds, self._step_seconds = 0.0, 0.0
        return out


class Callbacks:
    """The loop's one entry point to every callback."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.items = callbacks

    def step_begin(self, ctx: LoopContext, step: int) -> None:
        for cb in self.items:
            cb.on_step_begin(ctx, step)

    def grads(self, ctx: LoopContext, step: int) -> None:
        for cb in self.items:
            cb.on_grads(ctx, step)

    def step_end(self, ctx: LoopContext, info: StepInfo) -> dict[str, float]:
        out: dict[str, float] = {}
        for cb in self.items:
            out.update(cb.on_step_end(ctx, info))
        return out

    def train_end(self, ctx: LoopContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for cb in self.items:
            out.update(cb.on_train_end(ctx))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {cb.name: cb.state_dict() for cb in self.items if hasattr(cb, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cb in self.items:
            if hasattr(cb, "load_state_dict") and cb.name in state:
                cb.load_state_dict(state[cb.name])
