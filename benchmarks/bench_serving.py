"""Serving throughput and latency of the Trellis engine against `model.generate`, SmolLM2-135M greedy, on CPU.

    python benchmarks/bench_serving.py [--model PATH] [--requests 32] [--concurrency 1,4,16]
                                       [--max-new-tokens 48] [--threads N] [--arrival-rate 3]
                                       [--static-policies groups[,greedy]]
                                       [--max-prefill-tokens 512] [--prefix-cache-mb 256]
                                       [--out benchmarks/results/serving-<date>.json]

On a GPU machine with no network and no SmolLM2 weights (needs only torch, transformers and trellis):

    PYTHONPATH=src python benchmarks/bench_serving.py --device cuda --dtype bfloat16 --random-weights

builds a randomly initialised model of SmolLM2-135M's configuration (written out below), token-id prompts
of the same shape as the chat workload (a shared system prompt, a shared passage before every third), and
ignores eos so every request generates exactly its max_new_tokens. Greedy "mismatches" there only show
bf16 noise on a random model's flat logits, not engine bugs.

One process, one model, measured in this order:
  bandwidth   a large tensor copy -> memory bandwidth; weight bytes per decode step -> the batch-1 bound
  sequential  peer A: one `model.generate` call per request, one after another (also the greedy reference)
  static-c    peer B: `model.generate` on left-padded static batches of c requests, batch after batch
  engine-c    Trellis `Engine.submit` with c client threads; each streams its request and sends the next
              one when it finishes (closed loop), so TTFT is the time to the first streamed token
  mixed       the same prompts with Poisson arrivals and max_new_tokens drawn from 8..96: the engine
              (requests submitted at their arrival time) against static batches of 16 in arrival order
              ("groups": a batch starts once its 16 members have arrived and the previous one is done;
              "greedy", optional: a batch takes whatever has arrived, up to 16, whenever the model is free).
              A static batch runs until its longest member is done; rows stopped by eos or by their own
              max_new_tokens only count the tokens they asked for.

Tokens counted are generated tokens up to and including eos (eos is honoured everywhere, as a server
would). Correctness: every engine output (uniform and mixed) is compared token for token with peer A's
greedy output for the same prompt (the mixed ones as prefixes); the static batch is compared too, to show
how much of any drift is left padding in fp32 rather than the engine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

TOPICS = [
    "how rainbows form",
    "why the sky is blue",
    "how bread rises",
    "the water cycle",
    "how vaccines work",
    "what a black hole is",
    "how bees make honey",
    "why leaves change colour in autumn",
    "how tides work",
    "how a bicycle stays upright",
    "what photosynthesis does",
    "how the internet routes a message",
    "why cats purr",
    "how volcanoes erupt",
    "what causes earthquakes",
    "how a refrigerator keeps food cold",
]
ASKS = [
    "Explain {t} to a curious ten-year-old.",
    "Write a detailed paragraph about {t}.",
    "Give me three surprising facts about {t}, with a sentence of explanation for each.",
    "I am studying for an exam. Describe {t} step by step.",
]
PASSAGE = (
    "The old harbour town sat at the mouth of a slow river. Fishing boats left before dawn and came back in "
    "the afternoon, and the market by the quay sold what they caught before the sun went down. Over a "
    "century the river silted up, the boats moved to a deeper port down the coast, and the town turned to "
    "visitors instead: the warehouses became cafes, the ropewalk a museum, and the lighthouse a place to "
    "watch the sunset. "
)


# SmolLM2-135M-Instruct's config.json (LlamaForCausalLM), for --random-weights
SMOLLM2_135M_CONFIG = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.041666666666666664,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


class StubTokenizer:
    """Enough of a tokenizer for the engine over token-id prompts: no text, pad id 2, no eos."""

    pad_token_id = 2
    eos_token_id = None

    def decode(self, ids: Any, skip_special_tokens: bool = True) -> str:
        return ""


def random_model(dtype: Any, device: str) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2_135M_CONFIG)
    model = LlamaForCausalLM(cfg).to(dtype=dtype, device=device).eval()
    # no eos anywhere: every request runs to its max_new_tokens on both peers
    model.config.eos_token_id = None
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=2, bos_token_id=1)
    return model


def build_random_prompts(n: int, seed: int, vocab: int) -> list[list[int]]:
    """Token-id prompts shaped like `build_prompts`: a shared 31-token system prompt, a question of 8-18
    tokens, and every third one behind 1-3 copies of a shared 98-token passage (39..340 tokens)."""
    rng = random.Random(seed)
    system = [rng.randrange(3, vocab) for _ in range(31)]
    passage = [rng.randrange(3, vocab) for _ in range(98)]
    out = []
    for i in range(n):
        body = [rng.randrange(3, vocab) for _ in range(rng.randint(8, 18))]
        if i % 3 == 2:
            body = passage * rng.randint(1, 3) + body
        out.append(system + body)
    return out


def sync() -> None:
    """Wait for queued GPU work, so wall-clock stamps mean what they say (no-op on CPU)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


# ---- workload --------------------------------------------------------------------------------------------
def build_prompts(tokenizer: Any, n: int, seed: int) -> list[list[int]]:
    """`n` chat prompts of varied length: short questions, and every third one behind a long passage."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = ASKS[i % len(ASKS)].format(t=TOPICS[i % len(TOPICS)])
        if i % 3 == 2:
            text = "Read this:\n" + PASSAGE * rng.randint(1, 3) + "\nNow, unrelated to it: " + text
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append([int(t) for t in ids])
    return out


def mixed_workload(n: int, rate: float, seed: int) -> tuple[list[int], list[float], list[int]]:
    """Request order (indices into the prompts), Poisson arrival times (s) and max_new_tokens (8..96)."""
    rng = random.Random(seed + 1)
    order = list(range(n))
    rng.shuffle(order)
    t, arrivals = 0.0, []
    for _ in range(n):
        arrivals.append(t)
        t += rng.expovariate(rate)
    max_new = [rng.randint(8, 96) for _ in range(n)]
    return order, arrivals, max_new


# ---- stats -----------------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(name: str, setting: str, wall: float, recs: list[dict], **extra: Any) -> dict:
    ttft = [r["ttft"] for r in recs]
    e2e = [r["e2e"] for r in recs]
    tokens = sum(len(r["ids"]) for r in recs)
    return {
        "system": name,
        "setting": setting,
        "requests": len(recs),
        "generated_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "e2e_p50_s": pct(e2e, 50),
        "e2e_p99_s": pct(e2e, 99),
        **extra,
    }


def trim(ids: list[int], eos: set[int], limit: int) -> list[int]:
    """Generated ids up to and including the first eos, at most `limit` of them."""
    out = []
    for t in ids[:limit]:
        out.append(t)
        if t in eos:
            break
    return out


def compare(got: list[int], ref: list[int]) -> int | None:
    """None when equal, else the first position where they differ."""
    for i in range(max(len(got), len(ref))):
        if i >= len(got) or i >= len(ref) or got[i] != ref[i]:
            return i
    return None


# ---- peers: model.generate ---------------------------------------------------------------------------------
class StepStamps:
    """A logits processor that only notes when each decode step's logits are ready (the first: prefill)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        sync()
        self.times.append(time.perf_counter())
        return scores


def hf_generate(
    model: Any,
    prompts: list[list[int]],
    max_new: int,
    pad_id: int,
    eos: set[int],
    limits: list[int] | None = None,
) -> tuple[list[list[int]], float, float]:
    """One `model.generate` call on a left-padded batch: outputs, first-token and end perf_counter times."""
    import torch
    from transformers import LogitsProcessorList

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    stamps = StepStamps()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            pad_token_id=pad_id,
            logits_processor=LogitsProcessorList([stamps]),
        )
    sync()
    end = time.perf_counter()
    limits = limits or [max_new] * len(prompts)
    gens = [trim(out[i, width:].tolist(), eos, limits[i]) for i in range(len(prompts))]
    return gens, stamps.times[0], end


def run_sequential(
    model: Any, prompts: list[list[int]], max_new: int, pad_id: int, eos: set[int]
) -> tuple[dict, list]:
    recs = []
    start = time.perf_counter()
    for p in prompts:
        t0 = time.perf_counter()
        (gen,), first, end = hf_generate(model, [p], max_new, pad_id, eos)
        recs.append({"ids": gen, "ttft": first - t0, "e2e": end - t0})
    wall = time.perf_counter() - start
    return summarize("sequential generate", "uniform c=1", wall, recs), [r["ids"] for r in recs]


def run_static(
    model: Any, prompts: list[list[int]], c: int, max_new: int, pad_id: int, eos: set[int]
) -> tuple[dict, list]:
    """Closed loop with c clients against a static-batch server: c requests in, all c answers out, repeat."""
    recs: list[dict] = []
    start = time.perf_counter()
    for b in range(0, len(prompts), c):
        t0 = time.perf_counter()
        gens, first, end = hf_generate(model, prompts[b : b + c], max_new, pad_id, eos)
        recs += [{"ids": g, "ttft": first - t0, "e2e": end - t0} for g in gens]
    wall = time.perf_counter() - start
    return summarize(f"static batch generate (b={c})", f"uniform c={c}", wall, recs), [r["ids"] for r in recs]


def run_static_mixed(
    model: Any,
    prompts: list[list[int]],
    arrivals: list[float],
    max_new: list[int],
    pad_id: int,
    eos: set[int],
    cap: int,
    policy: str,
) -> tuple[dict, list]:
    """Static batches over requests arriving in real time; a batch waits for its longest member."""
    recs: list[dict] = [{} for _ in prompts]
    start = time.perf_counter()
    nxt, batches = 0, []
    while nxt < len(prompts):
        now = time.perf_counter() - start
        if policy == "groups":
            members = list(range(nxt, min(nxt + cap, len(prompts))))
        else:  # greedy: whatever has arrived (at least the next one), up to cap
            members = [nxt] + [j for j in range(nxt + 1, min(nxt + cap, len(prompts))) if arrivals[j] <= now]
        wait = arrivals[members[-1]] - (time.perf_counter() - start)
        if wait > 0:
            time.sleep(wait)
        gens, first, end = hf_generate(
            model,
            [prompts[j] for j in members],
            max(max_new[j] for j in members),
            pad_id,
            eos,
            limits=[max_new[j] for j in members],
        )
        for j, g in zip(members, gens, strict=True):
            arrived = start + arrivals[j]
            recs[j] = {"ids": g, "ttft": first - arrived, "e2e": end - arrived}
        batches.append(len(members))
        nxt = members[-1] + 1
    wall = time.perf_counter() - start
    return (
        summarize(f"static batch generate ({policy}, <= {cap})", "mixed", wall, recs, batch_sizes=batches),
        [r["ids"] for r in recs],
    )


# ---- the engine ------------------------------------------------------------------------------------------
def _stream(engine: Any, prompt: list[int], max_new: int, t0: float) -> dict:
    from trellis.serving.sampling import SamplingParams

    ignore_eos = not engine.eos_token_ids  # --random-weights: fixed lengths
    handle = engine.submit(prompt, SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=ignore_eos))
    ttft, streamed = None, []
    for delta in handle:
        if delta.token_ids and ttft is None:
            ttft = time.perf_counter() - t0
        streamed += delta.token_ids
    comp = handle.result()
    end = time.perf_counter() - t0
    return {
        "ids": list(comp.token_ids),
        "ttft": ttft if ttft is not None else end,
        "e2e": end,
        "stream_ok": streamed == list(comp.token_ids),
        "finish": comp.finish_reason,
    }


def run_engine_closed(engine: Any, prompts: list[list[int]], c: int, max_new: int) -> tuple[dict, list]:
    """c client threads, each sending its next request when the previous one has finished streaming."""
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(prompts)):
        todo.put(i)
    recs: list[dict] = [{} for _ in prompts]
    errors: list[str] = []

    def client() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                recs[i] = _stream(engine, prompts[i], max_new, time.perf_counter())
            except Exception as exc:  # noqa: BLE001 - reported, the run goes on
                errors.append(f"request {i}: {exc!r}")
                recs[i] = {"ids": [], "ttft": float("nan"), "e2e": float("nan"), "stream_ok": False}

    threads = [threading.Thread(target=client) for _ in range(c)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    bad_stream = sum(not r.get("stream_ok", False) for r in recs)
    row = summarize(
        f"trellis engine (c={c})",
        f"uniform c={c}",
        wall,
        recs,
        errors=errors,
        stream_vs_result_mismatches=bad_stream,
    )
    return row, [r["ids"] for r in recs]


def run_engine_mixed(
    engine: Any, prompts: list[list[int]], arrivals: list[float], max_new: list[int]
) -> tuple[dict, list]:
    """Each request submitted at its arrival time from its own thread, streamed to the end."""
    recs: list[dict] = [{} for _ in prompts]
    errors: list[str] = []
    start = time.perf_counter()

    def one(j: int) -> None:
        wait = start + arrivals[j] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        try:
            recs[j] = _stream(engine, prompts[j], max_new[j], start + arrivals[j])
        except Exception as exc:  # noqa: BLE001
            errors.append(f"request {j}: {exc!r}")
            recs[j] = {"ids": [], "ttft": float("nan"), "e2e": float("nan")}

    threads = [threading.Thread(target=one, args=(j,)) for j in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    bad_stream = sum(not r.get("stream_ok", False) for r in recs)
    row = summarize(
        "trellis engine", "mixed", wall, recs, errors=errors, stream_vs_result_mismatches=bad_stream
    )
    return row, [r["ids"] for r in recs]


def reset_engine(engine: Any) -> None:
    """Forget earlier settings' prompts (the prefix cache would otherwise hand them back whole)."""
    if engine.prefix_cache is not None:
        engine.prefix_cache.clear()
    for k in engine.stats:
        engine.stats[k] = 0


def engine_stats(engine: Any) -> dict:
    out = dict(engine.stats)
    if engine.prefix_cache is not None:
        out["prefix_cache_hits"] = engine.prefix_cache.hits
        out["prefix_reused_tokens"] = engine.prefix_cache.reused_tokens
        engine.prefix_cache.hits = engine.prefix_cache.reused_tokens = 0
    return out


# ---- where the time goes ---------------------------------------------------------------------------
class ForwardTimer:
    """The wall time of every forward, with its input shape (batch, tokens): the model's own forward and the
    engine's lean decode steps. It wraps both rather than hooking the model, since a hooked model makes the
    engine leave its lean step (hooks promise the model's forward runs)."""

    def __init__(self, model: Any) -> None:
        from trellis.serving.lean_decode import LeanLlamaDecode

        self.records: list[tuple[tuple[int, int], float]] = []
        forward = model.forward

        def timed_forward(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            return self._timed(tuple(ids.shape) if ids is not None else (0, 0), forward, *args, **kwargs)

        model.forward = timed_forward
        lean_step = LeanLlamaDecode.__call__

        def timed_lean_step(step: Any, ids: Any, *args: Any) -> Any:
            return self._timed(tuple(ids.shape), lean_step, step, ids, *args)

        LeanLlamaDecode.__call__ = timed_lean_step

    def _timed(self, shape: tuple[int, int], fn: Any, *args: Any, **kwargs: Any) -> Any:
        sync()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        sync()
        self.records.append((shape, time.perf_counter() - t0))
        return out

    def take(self, wall: float) -> dict:
        """Summary of the forwards since the last call; `other_s` is wall time spent outside forwards."""
        recs, self.records = self.records, []
        dec = [(s, t) for s, t in recs if s[1] == 1]
        pre = [(s, t) for s, t in recs if s[1] != 1]
        fwd = sum(t for _, t in recs)
        return {
            "forward_s": fwd,
            "other_s": wall - fwd,
            "prefill_calls": len(pre),
            "prefill_s": sum(t for _, t in pre),
            "prefill_padded_tokens": sum(s[0] * s[1] for s, _ in pre),
            "decode_steps": len(dec),
            "decode_s": sum(t for _, t in dec),
            "decode_ms_mean": 1e3 * sum(t for _, t in dec) / max(1, len(dec)),
            "decode_batch_mean": sum(s[0] for s, _ in dec) / max(1, len(dec)),
        }


# ---- the bound -------------------------------------------------------------------------------------------
def bandwidth_bound(model: Any, gib: float = 1.0, repeats: int = 10) -> dict:
    """Copy bandwidth (bytes read + written per second, best of `repeats`) and the batch-1 decode bound."""
    import torch

    n = int(gib * 2**30) // 4
    src = torch.ones(n, dtype=torch.float32, device=next(model.parameters()).device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - t0)
    bw = 2 * n * 4 / best
    del src, dst
    # unique parameters (a tied lm_head is the embedding matrix, read once per step as the output layer)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "copy_bandwidth_GBps": bw / 1e9,
        "weight_bytes": weight_bytes,
        "max_decode_steps_per_s_b1": bw / weight_bytes,
        "min_step_ms_b1": 1e3 * weight_bytes / bw,
    }


# ---- report ----------------------------------------------------------------------------------------------
def print_table(rows: list[dict]) -> None:
    head = (
        f"{'setting':<13} {'system':<40} {'req':>4} {'tokens':>6} {'wall s':>7} {'tok/s':>7} "
        f"{'TTFT p50':>8} {'TTFT p99':>8} {'e2e p50':>8} {'e2e p99':>8} {'mismatch':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        mm = r.get("mismatches")
        print(
            f"{r['setting']:<13} {r['system']:<40} {r['requests']:>4} {r['generated_tokens']:>6} "
            f"{r['wall_s']:>7.2f} {r['tokens_per_s']:>7.1f} {r['ttft_p50_s']:>8.3f} {r['ttft_p99_s']:>8.3f} "
            f"{r['e2e_p50_s']:>8.3f} {r['e2e_p99_s']:>8.3f} {'' if mm is None else mm:>8}"
        )


def print_forwards(rows: list[dict]) -> None:
    head = (
        f"{'setting':<13} {'system':<40} {'prefill s':>9} {'pad tok':>7} {'steps':>6} {'mean B':>6} "
        f"{'ms/step':>7} {'decode s':>8} {'other s':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        f = r.get("forwards")
        if f is None:
            continue
        print(
            f"{r['setting']:<13} {r['system']:<40} {f['prefill_s']:>9.2f} {f['prefill_padded_tokens']:>7} "
            f"{f['decode_steps']:>6} {f['decode_batch_mean']:>6.1f} {f['decode_ms_mean']:>7.1f} "
            f"{f['decode_s']:>8.2f} {f['other_s']:>7.2f}"
        )


def mismatch_report(gens: list[list[int]], refs: list[list[int]]) -> list[dict]:
    out = []
    for i, (g, r) in enumerate(zip(gens, refs, strict=True)):
        at = compare(g, r)
        if at is not None:
            out.append({"request": i, "first_diff": at, "got_len": len(g), "ref_len": len(r)})
    return out


def mixed_mismatches(
    gens: list[list[int]], refs: list[list[int]], max_new: list[int], ref_len: int, eos: set[int]
) -> list[dict]:
    """Mixed requests against peer A's greedy output of `ref_len` tokens for the same prompt.

    Where the reference ended by eos or the request asked for at most `ref_len` tokens, the whole output is
    known; otherwise only its first `ref_len` tokens are.
    """
    out = []
    for i, (g, r, m) in enumerate(zip(gens, refs, max_new, strict=True)):
        known = m <= ref_len or (r and r[-1] in eos)
        got, want = (g, trim(r, eos, m)) if known else (g[:ref_len], r)
        at = compare(got, want)
        if at is not None:
            out.append({"request": i, "first_diff": at, "got_len": len(g), "ref_len": len(want)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default=None, help="HF checkpoint dir (default: trellis's SmolLM2-135M-Instruct)"
    )
    ap.add_argument("--requests", type=int, default=32, help="requests per setting")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    ap.add_argument(
        "--arrival-rate", type=float, default=3.0, help="mixed workload: Poisson rate, requests/s"
    )
    ap.add_argument("--mixed-batch", type=int, default=16, help="mixed workload: static batch cap")
    ap.add_argument(
        "--static-policies",
        default="groups",
        help="mixed workload static peers, from groups,greedy (greedy adds about a minute)",
    )
    ap.add_argument("--max-batch-size", type=int, default=16, help="engine max_batch_size")
    ap.add_argument("--max-prefill-tokens", type=int, default=512, help="engine chunked-prefill cap")
    ap.add_argument("--prefix-cache-mb", type=float, default=256.0, help="engine prefix cache (0: off)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="a random model of SmolLM2-135M's config, token-id prompts, eos ignored (no weights, no network)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the uniform (static, engine) pairs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/serving-<date>.json)")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",") if c.strip()]

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trellis.serving.engine import Engine

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.random_weights:
        args.model = "random SmolLM2-135M config"
        tokenizer: Any = StubTokenizer()
        model = random_model(dtype, args.device)
    else:
        if args.model is None:
            from trellis.convert.smollm2 import smollm2_checkpoint

            args.model = str(smollm2_checkpoint())
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    engine = Engine(
        model,
        tokenizer,
        max_batch_size=args.max_batch_size,
        max_prefill_tokens=args.max_prefill_tokens,
        prefix_cache_mb=args.prefix_cache_mb,
    )
    eos = set(engine.eos_token_ids)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    if args.random_weights:
        prompts = build_random_prompts(args.requests, args.seed, SMOLLM2_135M_CONFIG["vocab_size"])
    else:
        prompts = build_prompts(tokenizer, args.requests, args.seed)
    plens = [len(p) for p in prompts]
    print(
        f"model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"{args.requests} prompts of {min(plens)}..{max(plens)} tokens, eos {sorted(eos)}, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}",
        flush=True,
    )

    policies = [p for p in args.static_policies.split(",") if p.strip()]
    load_start = os.getloadavg()
    busy = _cpu_busy()  # we are idle here, so this is everyone else
    if busy > 0.1:
        print(f"warning: the CPU is {100 * busy:.0f}% busy before the run: other processes share it")
    t_all = time.perf_counter()
    stat0, own0 = _cpu_seconds(), os.times()
    # warm-up: kernels for batch 1 and a batch, prefill and decode, on both paths
    hf_generate(model, prompts[:1], 4, pad_id, eos)
    hf_generate(model, prompts[:4], 4, pad_id, eos)
    from trellis.serving.sampling import SamplingParams

    engine.generate(prompts[:4], SamplingParams(temperature=0.0, max_tokens=4))
    engine.generate(prompts[:16], SamplingParams(temperature=0.0, max_tokens=4))
    engine.submit(prompts[0], SamplingParams(temperature=0.0, max_tokens=4)).result()

    bound = bandwidth_bound(model)
    print(
        f"bandwidth {bound['copy_bandwidth_GBps']:.1f} GB/s (copy), "
        f"weights {bound['weight_bytes'] / 1e6:.0f} MB "
        f"-> at most {bound['max_decode_steps_per_s_b1']:.1f} decode steps/s at batch 1",
        flush=True,
    )

    timer = ForwardTimer(model)
    rows: list[dict] = []
    seq_row, refs = run_sequential(model, prompts, args.max_new_tokens, pad_id, eos)
    seq_row["forwards"] = timer.take(seq_row["wall_s"])
    seq_row["mismatches"] = 0
    rows.append(seq_row)
    print(f"  {seq_row['system']}: {seq_row['tokens_per_s']:.1f} tok/s", flush=True)
    mismatches: dict[str, list[dict]] = {}
    # on a shared machine the load drifts within minutes: --rounds repeats each (static, engine) pair so
    # each ratio compares neighbours in time, and the median ratio is the headline
    uniform: list[tuple[int, int, dict, dict | None]] = []  # (round, c, engine row, static row)
    for rnd in range(args.rounds):
        for c in conc:
            srow = None
            if c > 1:
                srow, gens = run_static(model, prompts, c, args.max_new_tokens, pad_id, eos)
                mismatches[f"{srow['system']} round {rnd}"] = mismatch_report(gens, refs)
                srow["mismatches"] = len(mismatches[f"{srow['system']} round {rnd}"])
                srow["forwards"] = timer.take(srow["wall_s"])
                srow["round"] = rnd
                rows.append(srow)
                print(f"  {srow['system']}: {srow['tokens_per_s']:.1f} tok/s", flush=True)
            reset_engine(engine)
            row, gens = run_engine_closed(engine, prompts, c, args.max_new_tokens)
            row["engine_stats"] = engine_stats(engine)
            mismatches[f"{row['system']} round {rnd}"] = mismatch_report(gens, refs)
            row["mismatches"] = len(mismatches[f"{row['system']} round {rnd}"])
            row["forwards"] = timer.take(row["wall_s"])
            row["round"] = rnd
            rows.append(row)
            uniform.append((rnd, c, row, srow))
            print(f"  {row['system']}: {row['tokens_per_s']:.1f} tok/s", flush=True)

    order, arrivals, max_new = mixed_workload(args.requests, args.arrival_rate, args.seed)
    mprompts = [prompts[i] for i in order]
    # greedy is deterministic, so a request's output is a prefix of (or, past 48, extends) peer A's
    mrefs = [refs[i] for i in order]
    reset_engine(engine)
    row, gens = run_engine_mixed(engine, mprompts, arrivals, max_new)
    row["engine_stats"] = engine_stats(engine)
    mismatches["engine mixed"] = mixed_mismatches(gens, mrefs, max_new, args.max_new_tokens, eos)
    row["mismatches"] = len(mismatches["engine mixed"])
    row["forwards"] = timer.take(row["wall_s"])
    rows.append(row)
    print(f"  engine mixed: {row['tokens_per_s']:.1f} tok/s", flush=True)
    for policy in policies:
        row, gens = run_static_mixed(
            model, mprompts, arrivals, max_new, pad_id, eos, args.mixed_batch, policy
        )
        key = f"static mixed {policy}"
        mismatches[key] = mixed_mismatches(gens, mrefs, max_new, args.max_new_tokens, eos)
        row["mismatches"] = len(mismatches[key])
        row["forwards"] = timer.take(row["wall_s"])
        rows.append(row)
        print(f"  {key}: {row['tokens_per_s']:.1f} tok/s", flush=True)
    engine.shutdown()
    total = time.perf_counter() - t_all
    load_end = os.getloadavg()
    stat1, own1 = _cpu_seconds(), os.times()
    # CPU time others used while we ran: a shared machine shows up here (on 2 cores, ~1 s/s = a core)
    others = (stat1 - stat0) - ((own1.user + own1.system) - (own0.user + own0.system))

    def tps(system: str, setting: str) -> float:
        return next(r["tokens_per_s"] for r in rows if r["system"] == system and r["setting"] == setting)

    cmax = max(conc)
    ratios: dict[str, float] = {}
    if cmax > 1:
        ratios[f"static b={cmax} / sequential"] = tps(
            f"static batch generate (b={cmax})", f"uniform c={cmax}"
        ) / tps("sequential generate", "uniform c=1")
        for c in [c for c in conc if c > 1]:
            per_round = [e["tokens_per_s"] / st["tokens_per_s"] for _, cc, e, st in uniform if cc == c and st]
            ratios[f"engine c={c} / static b={c} (uniform, median of {len(per_round)})"] = statistics.median(
                per_round
            )
            if len(per_round) > 1:
                ratios.update(
                    {f"engine c={c} / static b={c} (round {i})": r for i, r in enumerate(per_round)}
                )
    for policy in policies:
        ratios[f"engine / static {policy} (mixed)"] = tps("trellis engine", "mixed") / tps(
            f"static batch generate ({policy}, <= {args.mixed_batch})", "mixed"
        )
    eng1 = next(r for r in rows if r["system"] == "trellis engine (c=1)") if 1 in conc else None
    bound_use = {
        "sequential_tok_per_s_over_bound": seq_row["tokens_per_s"] / bound["max_decode_steps_per_s_b1"],
    }
    if eng1 is not None:
        bound_use["engine_c1_tok_per_s_over_bound"] = (
            eng1["tokens_per_s"] / bound["max_decode_steps_per_s_b1"]
        )

    print()
    print_table(rows)
    print()
    print("where the time went (forward hooks on the model; other = wall time outside model forwards):")
    print_forwards(rows)
    print()
    print(
        f"memory-bandwidth bound: {bound['copy_bandwidth_GBps']:.1f} GB/s copy bandwidth, "
        f"{bound['weight_bytes'] / 1e6:.0f} MB of weights per decode step -> "
        f"{bound['max_decode_steps_per_s_b1']:.1f} steps/s ({bound['min_step_ms_b1']:.1f} ms/step) "
        "at batch 1; " + ", ".join(f"{k} {v:.2f}" for k, v in bound_use.items())
    )
    if others / total > 0.1:
        print(f"warning: other processes used {others / total:.2f} CPU-seconds per second during the run")
    print(
        f"CPU {100 * busy:.0f}% busy before the run; load average (1, 5, 15 min): start "
        f"{tuple(round(x, 2) for x in load_start)}, end {tuple(round(x, 2) for x in load_end)}"
    )
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    for k, v in mismatches.items():
        if v:
            print(f"mismatches vs sequential greedy, {k}: {v}")
    print(
        f"mixed workload: {args.requests} requests, Poisson {args.arrival_rate}/s over "
        f"{arrivals[-1]:.1f} s, max_new_tokens {min(max_new)}..{max(max_new)}; total run {total:.0f} s"
    )

    date = dt.datetime.now(dt.UTC)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"serving-{date:%Y-%m-%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "date": date.isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "random_weights": args.random_weights,
        "greedy": True,
        "max_new_tokens": args.max_new_tokens,
        "requests": args.requests,
        "prompt_tokens": {"min": min(plens), "max": max(plens)},
        "mixed": {
            "arrival_rate": args.arrival_rate,
            "arrivals_s": arrivals,
            "max_new_tokens": max_new,
            "order": order,
            "static_batch_cap": args.mixed_batch,
        },
        "bound": {**bound, **bound_use},
        "results": rows,
        "ratios": ratios,
        "mismatches": mismatches,
        "total_s": total,
        "load_average": {"start_1m_5m_15m": load_start, "end_1m_5m_15m": load_end},
        "cpu_busy_before_run": busy,
        "other_processes_cpu_s_per_s": others / total,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    summary = {
        "device": result["gpu"] or result["machine"]["processor"],
        "dtype": args.dtype,
        "model": args.model,
        "ratios": ratios,
        "tokens_per_s": {_label(r, args.rounds): round(r["tokens_per_s"], 1) for r in rows},
        "ttft_p99_s": {_label(r, args.rounds): round(r["ttft_p99_s"], 3) for r in rows},
        "mismatches": {k: len(v) for k, v in mismatches.items()},
    }
    print(json.dumps(summary))


def _label(row: dict, rounds: int) -> str:
    label = f"{row['setting']} | {row['system']}"
    return f"{label} | round {row['round']}" if rounds > 1 and "round" in row else label


def _cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds`, from /proc/stat (0 where it cannot be read)."""

    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1 - (i1 - i0) / max(1, t1 - t0)


def _cpu_seconds() -> float:
    """Busy CPU-seconds of the whole machine so far (all processes), from /proc/stat."""
    try:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
