"""The engine's per-decode-step host overhead, exposed with a tiny model whose forward costs little.

    python benchmarks/bench_engine_step.py [--requests 8] [--max-new-tokens 64] [--batch 16]
                                           [--hidden 64] [--layers 2] [--vocab 0] [--profile]
                                           [--out benchmarks/results/serving-step-<date>.json]

On a GPU a 135M model's decode step takes a few milliseconds, so whatever Python work the engine does
around each forward (choosing tokens, stop checks, detokenization, mask and position bookkeeping, cache
trimming, device->host copies) shows up in tokens/s; on a CPU with SmolLM2 the forward hides it. Here a
random Llama with hidden size 64 and 2 layers (like tests/serving/conftest.py) makes the forward cheap, so
the time around it is what is left. Greedy, eos ignored (every request generates exactly max-new-tokens).

Measured, in this order, each on the same prompts:
  generate c=1      one `model.generate` per request, one after another (also the greedy reference)
  generate b=B      `model.generate` on left-padded static batches of B
  engine gen c=1    `Engine.generate([prompt])` per request (offline path, no text needed)
  engine gen c=B    one `Engine.generate` call over B prompts at a time
  engine stream c=1 / c=B   `Engine.submit` from 1 / B client threads, streamed (server path: text, deltas)
  engine async c=1 / c=B    the same from 1 / B coroutines on one event loop, as the HTTP server reads them

Per setting: tokens/s, wall ms per decode step, and the host part of it: (wall - time inside the model's
forward) per decode step, from forward hooks. `--profile` adds a cProfile breakdown of the engine's decode
steps (microseconds per step in the functions that make up a step). On a GPU (`--device cuda --dtype
bfloat16`), `--hidden 576 --layers 30` gives SmolLM2-135M's depth and width (with 4 heads).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import platform
import pstats
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import ForwardTimer, StubTokenizer, compare, hf_generate, run_engine_closed  # noqa: E402

SMOLLM2_TOKENIZER = Path.home() / ".cache/trellis/smollm2/SmolLM2-135M-Instruct"

# functions whose time per decode step the profile reports (file suffix, function name)
PROFILED = [
    ("serving/batch.py", "step"),
    ("serving/batch.py", "_forward"),
    ("module.py", "_call_impl"),
    ("serving/batch.py", "_accept"),
    ("serving/batch.py", "_record"),
    ("serving/batch.py", "_check_stops"),
    ("serving/sampling.py", "choose_tokens"),
    ("serving/request.py", "decode_step"),
    ("serving/request.py", "find_stop"),
    ("serving/batch.py", "retire"),
    ("serving/batch.py", "_keep"),
    ("serving/engine.py", "_emit"),
    ("serving/request.py", "push_deltas"),
    ("serving/request.py", "stream_safe_len"),
    ("serving/request.py", "take_delta"),
    ("serving/engine.py", "_run_busy_period"),
    ("serving/scheduler.py", "prefill"),
    ("~", "<method 'tolist' of 'torch._C.TensorBase' objects>"),
    ("~", "<method 'item' of 'torch._C.TensorBase' objects>"),
    ("~", "<built-in method cat of type object at"),
]


def tiny_model(vocab: int, hidden: int, layers: int, pad_id: int) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden,
        vocab_size=vocab,
        max_position_embeddings=2048,
        initializer_range=0.2,  # peaked logits: float noise never flips a greedy argmax
        pad_token_id=pad_id,
        eos_token_id=None,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=pad_id)
    return model


def random_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(rng.randint(16, 64))] for _ in range(n)]


def setting_row(name: str, wall: float, gens: list[list[int]], refs: list[list[int]], fwd: dict) -> dict:
    tokens = sum(len(g) for g in gens)
    steps = max(1, fwd["decode_steps"])
    return {
        "setting": name,
        "wall_s": wall,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "decode_steps": fwd["decode_steps"],
        "decode_batch_mean": fwd["decode_batch_mean"],
        # prefill is cheap here (prompts of 16..64 tokens): wall per decode step is what a stream sees
        "step_ms": 1e3 * (wall - fwd["prefill_s"]) / steps,
        "forward_ms_per_step": 1e3 * fwd["decode_s"] / steps,
        "host_ms_per_step": 1e3 * (wall - fwd["forward_s"]) / steps,
        "mismatches": sum(compare(g, r) is not None for g, r in zip(gens, refs, strict=True)),
    }


def run_generate(model: Any, prompts: list[list[int]], b: int, max_new: int, pad_id: int) -> tuple:
    gens: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), b):
        out, _, _ = hf_generate(model, prompts[i : i + b], max_new, pad_id, set())
        gens += out
    return time.perf_counter() - t0, gens


def run_engine_generate(engine: Any, prompts: list[list[int]], b: int, max_new: int) -> tuple:
    from trellis.serving.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    gens: list[list[int]] = []
    t0 = time.perf_counter()
    for i in range(0, len(prompts), b):
        gens += [o.token_ids for o in engine.generate(prompts[i : i + b], params)]
    return time.perf_counter() - t0, gens


def run_engine_async(engine: Any, prompts: list[list[int]], c: int, max_new: int) -> tuple:
    """c client coroutines on one event loop (as in the HTTP server), each streaming its request and
    sending the next when it finishes."""
    import asyncio

    from trellis.serving.sampling import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    gens: list[list[int]] = [[] for _ in prompts]
    todo = list(range(len(prompts)))

    async def client() -> None:
        while todo:
            i = todo.pop(0)
            async for delta in engine.submit(prompts[i], params):
                gens[i] += delta.token_ids

    async def main() -> None:
        await asyncio.gather(*(client() for _ in range(c)))

    t0 = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t0, gens


def profile_steps(run: Any, steps_of: Any, engine: Any = None) -> dict:
    """cProfile one run; microseconds per decode step spent in (cumulative) each of PROFILED.

    With `engine`, the engine's background thread is profiled (the streaming path) instead of this one.
    """
    prof = cProfile.Profile()
    if engine is None:
        prof.enable()
        run()
        prof.disable()
    else:
        real = engine._run_busy_period

        def profiled() -> None:
            prof.enable()
            try:
                real()
            finally:
                prof.disable()

        engine._run_busy_period = profiled
        try:
            run()
        finally:
            del engine._run_busy_period
    steps = max(1, steps_of())
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    out: dict[str, dict[str, float]] = {}
    for (path, _line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        for suffix, name in PROFILED:
            if path.endswith(suffix) and (func == name or (suffix == "~" and func.startswith(name))):
                key = f"{suffix.split('/')[-1]}:{name.split(' of ')[0]}"
                agg = out.setdefault(
                    key, {"calls_per_step": 0.0, "us_per_step": 0.0, "self_us_per_step": 0.0}
                )
                agg["calls_per_step"] += ncalls / steps
                agg["us_per_step"] += 1e6 * cumtime / steps
                agg["self_us_per_step"] += 1e6 * tottime / steps
    top = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:25]
    out["_top_self_time"] = {
        f"{Path(p).name}:{ln}:{fn}": round(1e6 * tt / steps, 1) for (p, ln, fn), (_, _, tt, _, _) in top
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=16, help="requests per setting (a multiple of --batch)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--batch", type=int, default=16, help="the concurrency / static batch of the c=B settings"
    )
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument(
        "--vocab",
        type=int,
        default=0,
        help="0: SmolLM2's tokenizer and vocab (text is decoded); N: N ids, no text",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--profile", action="store_true", help="add a cProfile breakdown of engine decode steps")
    ap.add_argument("--skip-stream", action="store_true", help="leave out the submit/stream settings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/serving-step-<date>.json)"
    )
    args = ap.parse_args()

    import torch
    import transformers

    from trellis.serving.engine import Engine

    torch.set_num_threads(args.threads)
    if args.vocab:
        tokenizer: Any = StubTokenizer()
        vocab = args.vocab
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER)
        vocab = len(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 2
    model = tiny_model(vocab, args.hidden, args.layers, pad_id).to(args.device, getattr(torch, args.dtype))

    def make_engine() -> Any:
        engine = Engine(model, tokenizer, max_batch_size=args.batch)
        engine.eos_token_ids = frozenset()  # eos ignored everywhere: every request generates max-new-tokens
        return engine

    engine = make_engine()
    prompts = random_prompts(args.requests, vocab, args.seed)
    b, n_new = args.batch, args.max_new_tokens
    print(
        f"tiny Llama hidden {args.hidden} x {args.layers} layers, vocab {vocab}: "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; {len(prompts)} prompts of "
        f"{min(map(len, prompts))}..{max(map(len, prompts))} tokens, {n_new} new tokens each; "
        f"torch {torch.__version__} threads {torch.get_num_threads()}",
        flush=True,
    )
    load_start = os.getloadavg()
    # warm-up both paths
    hf_generate(model, prompts[:2], 4, pad_id, set())
    run_engine_generate(engine, prompts[:2], 2, 4)
    timer = ForwardTimer(model)

    rows: list[dict] = []

    def record(name: str, wall: float, gens: list[list[int]], refs: list[list[int]]) -> None:
        row = setting_row(name, wall, gens, refs, timer.take(wall))
        rows.append(row)
        print(
            f"  {name:<20} {row['tokens_per_s']:8.1f} tok/s  step {row['step_ms']:.3f} ms "
            f"(forward {row['forward_ms_per_step']:.3f}, host {row['host_ms_per_step']:.3f})  "
            f"batch {row['decode_batch_mean']:.1f}  mismatches {row['mismatches']}",
            flush=True,
        )

    wall, refs = run_generate(model, prompts, 1, n_new, pad_id)
    record("generate c=1", wall, refs, refs)
    wall, gens = run_generate(model, prompts, b, n_new, pad_id)
    record(f"generate b={b}", wall, gens, refs)
    wall, gens = run_engine_generate(engine, prompts, 1, n_new)
    record("engine gen c=1", wall, gens, refs)
    wall, gens = run_engine_generate(engine, prompts, b, n_new)
    record(f"engine gen c={b}", wall, gens, refs)
    if not args.skip_stream:
        for c in (1, b):
            srow, gens = run_engine_closed(engine, prompts, c, n_new)
            record(f"engine stream c={c}", srow["wall_s"], gens, refs)
        for c in (1, b):
            wall, gens = run_engine_async(engine, prompts, c, n_new)
            record(f"engine async c={c}", wall, gens, refs)
        engine.shutdown()

    profiles: dict[str, dict] = {}
    if args.profile:
        settings = {
            "engine gen c=1": lambda: run_engine_generate(engine, prompts, 1, n_new),
            f"engine gen c={b}": lambda: run_engine_generate(engine, prompts, b, n_new),
        }
        if not args.skip_stream:
            engine = make_engine()  # the one above is shut down
            settings["engine stream c=1"] = lambda: run_engine_closed(engine, prompts, 1, n_new)
            settings[f"engine stream c={b}"] = lambda: run_engine_closed(engine, prompts, b, n_new)
            settings[f"engine async c={b}"] = lambda: run_engine_async(engine, prompts, b, n_new)
        for name, run in settings.items():
            thread = engine if "stream" in name or "async" in name else None
            profiles[name] = profile_steps(run, lambda: timer.take(1.0)["decode_steps"], thread)
            print(f"  profile {name} (us per decode step, cumulative / self):")
            for key, agg in profiles[name].items():
                if not key.startswith("_"):
                    print(
                        f"    {key:<28} {agg['us_per_step']:9.1f} {agg['self_us_per_step']:9.1f}"
                        f"   calls/step {agg['calls_per_step']:.2f}"
                    )

        engine.shutdown()

    def ratio(a: str, ref: str) -> float:
        get = {r["setting"]: r["tokens_per_s"] for r in rows}
        return get[a] / get[ref]

    ratios = {
        "engine gen c=1 / generate c=1": ratio("engine gen c=1", "generate c=1"),
        f"engine gen c={b} / generate b={b}": ratio(f"engine gen c={b}", f"generate b={b}"),
    }
    if not args.skip_stream:
        ratios["engine stream c=1 / generate c=1"] = ratio("engine stream c=1", "generate c=1")
        ratios[f"engine stream c={b} / generate b={b}"] = ratio(f"engine stream c={b}", f"generate b={b}")
        ratios["engine async c=1 / generate c=1"] = ratio("engine async c=1", "generate c=1")
        ratios[f"engine async c={b} / generate b={b}"] = ratio(f"engine async c={b}", f"generate b={b}")
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}x")
    out = Path(args.out or f"benchmarks/results/serving-step-{dt.date.today().isoformat()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "trellis_serving": str(Path(sys.modules[Engine.__module__].__file__ or "").parent),
        "load_avg_start": load_start,
        "load_avg_end": os.getloadavg(),
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": vocab, "dtype": args.dtype},
        "device": args.device,
        "requests": len(prompts),
        "max_new_tokens": n_new,
        "rows": rows,
        "ratios": ratios,
        "profiles": profiles,
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
