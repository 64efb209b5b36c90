"""Load test of `trellis serve` with SmolLM2-135M-Instruct: hundreds of requests at concurrency 16 through
the real `openai` client, each answer checked against its own greedy `model.generate` reference.

    python benchmarks/bench_serving_load.py [--model PATH] [--requests 320] [--distinct 64]
                                            [--concurrency 16] [--threads 2] [--out JSON]

The server runs as a subprocess (`python -m trellis.cli serve`, 127.0.0.1 only); this process computes the
references first (one `model.generate` per distinct request, before the server starts, so they do not
compete for the CPU), then sends the requests from `--concurrency` threads: chat and completion, streamed
and not, greedy, max_tokens 8..32, distinct requests repeated in shuffled order. Half the distinct
prompts share a long preamble (the prefix cache's case). Reported: errors, lost responses, mismatches
(an answer that is not its own request's reference: a mix-up shows here), throughput, latency
percentiles, the load average, and the server's own /metrics counters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_serving import (
    pct,  # a sibling script: `python benchmarks/bench_serving_load.py` puts it on the path
)

TOPICS = ["rainbows", "bread", "tides", "volcanoes", "bees", "the moon", "glaciers", "owls"]
ASKS = [
    "In one sentence, what are {t}?",
    "Name two facts about {t}.",
    "Why do people study {t}?",
    "Write a short line of poetry about {t}.",
]
PREAMBLE = (
    "You are answering questions for a museum's visitor guide. Keep every answer short, friendly and "
    "accurate, and avoid jargon. Visitors range from children to retired engineers. "
)




def build_distinct(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = ASKS[i % len(ASKS)].format(t=TOPICS[(i // len(ASKS)) % len(TOPICS)]) + f" (#{i})"
        if i % 2:
            text = PREAMBLE + text
        out.append({"text": text, "chat": i % 3 != 2, "max_tokens": rng.randint(8, 32)})
    return out


def references(model_dir: str, distinct: list[dict], threads: int) -> tuple[list[str], list[int], float]:
    """Greedy text and token count of every distinct request, one `model.generate` each."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    texts, counts = [], []
    t0 = time.perf_counter()
    for d in distinct:
        if d["chat"]:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": d["text"]}], add_generation_prompt=True, tokenize=True
            )
            ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            ids = tok(d["text"], add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=d["max_tokens"],
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else min(eos),
            )
        gen = out[0, len(ids) :].tolist()
        cut = next((i + 1 for i, t in enumerate(gen) if t in eos), len(gen))
        gen = gen[:cut]
        counts.append(len(gen))
        texts.append(tok.decode(gen[:-1] if gen and gen[-1] in eos else gen, skip_special_tokens=True))
    return texts, counts, time.perf_counter() - t0


def start_server(model_dir: str, port: int, threads: int, max_queue: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    cmd = [
        sys.executable,
        "-m",
        "trellis.cli",
        "serve",
        model_dir,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--set",
        f"serve.max_queue={max_queue}",
        "--set",
        "serve.model_name=smollm2",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"server exited ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit("server did not become healthy")


def send(client: Any, d: dict, stream: bool) -> dict:
    kw = {"model": "smollm2", "max_tokens": d["max_tokens"], "temperature": 0}
    t0 = time.perf_counter()
    ttft = None
    text, used = "", None
    if d["chat"]:
        messages = [{"role": "user", "content": d["text"]}]
        if stream:
            for c in client.chat.completions.create(messages=messages, stream=True, **kw):
                piece = c.choices[0].delta.content if c.choices else None
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece or ""
        else:
            r = client.chat.completions.create(messages=messages, **kw)
            text, used = r.choices[0].message.content, r.usage.completion_tokens
    else:
        if stream:
            for c in client.completions.create(prompt=d["text"], stream=True, **kw):
                if c.choices and c.choices[0].text and ttft is None:
                    ttft = time.perf_counter() - t0
                text += c.choices[0].text if c.choices else ""
        else:
            r = client.completions.create(prompt=d["text"], **kw)
            text, used = r.choices[0].text, r.usage.completion_tokens
    return {"text": text, "used": used, "e2e": time.perf_counter() - t0, "ttft": ttft}


def scrape(url: str) -> dict[str, float]:
    import httpx

    out = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default=None, help="HF checkpoint dir (default: trellis's SmolLM2-135M-Instruct)"
    )
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--distinct", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server and the references")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/serving-load-<date>.json)"
    )
    args = ap.parse_args()

    import openai

    if args.model is None:
        from trellis.convert.smollm2 import smollm2_checkpoint

        args.model = str(smollm2_checkpoint())
    distinct = build_distinct(args.distinct, args.seed)
    print(f"references: {len(distinct)} greedy model.generate calls ...", flush=True)
    refs, ref_counts, ref_s = references(args.model, distinct, args.threads)
    print(f"  {ref_s:.0f} s; {len(set(refs))} distinct answers", flush=True)

    rng = random.Random(args.seed + 1)
    jobs = [(j % len(distinct), (j // len(distinct)) % 2 == 1) for j in range(args.requests)]
    rng.shuffle(jobs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, args.threads, max_queue=4 * args.concurrency)
    try:
        wait_healthy(url, proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        send(client, distinct[0], False)  # warm-up
        base = scrape(url)
        load_start = os.getloadavg()
        errors: list[str] = []

        def one(job: tuple[int, bool]) -> dict:
            i, stream = job
            try:
                return {"i": i, "stream": stream, **send(client, distinct[i], stream)}
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"request {i}: {exc!r}")
                return {"i": i, "stream": stream, "text": None, "used": None, "e2e": float("nan")}

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, jobs))
        wall = time.perf_counter() - t0
        load_end = os.getloadavg()
        metrics = scrape(url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    lost = sum(r["text"] is None for r in results)
    mismatched = [r for r in results if r["text"] is not None and r["text"] != refs[r["i"]]]
    bad_usage = [r for r in results if r["used"] is not None and r["used"] != ref_counts[r["i"]]]
    tokens = sum(ref_counts[r["i"]] for r in results if r["text"] is not None)
    e2e = [r["e2e"] for r in results if r["text"] is not None]
    ttft = [r["ttft"] for r in results if r.get("ttft") is not None]
    delta = {k: metrics.get(k, 0) - base.get(k, 0) for k in metrics if k.endswith("_total")}
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "model": args.model,
        "requests": len(jobs),
        "distinct": len(distinct),
        "concurrency": args.concurrency,
        "errors": len(errors),
        "error_samples": errors[:5],
        "lost": lost,
        "mismatches": len(mismatched),
        "mismatch_samples": [{"i": r["i"], "got": r["text"], "want": refs[r["i"]]} for r in mismatched[:3]],
        "usage_mismatches": len(bad_usage),
        "wall_s": wall,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "requests_per_s": len(jobs) / wall,
        "e2e_p50_s": pct(e2e, 50),
        "e2e_p99_s": pct(e2e, 99),
        "stream_ttft_p50_s": pct(ttft, 50),
        "stream_ttft_p99_s": pct(ttft, 99),
        "server_counters": delta,
        "references_s": ref_s,
        "load_average": {"start_1m_5m_15m": load_start, "end_1m_5m_15m": load_end},
    }
    print(json.dumps({k: v for k, v in result.items() if k not in ("mismatch_samples",)}, indent=2))
    date = dt.datetime.now(dt.UTC)
    out = (
        Path(args.out)
        if args.out
        else Path(__file__).parent / "results" / f"serving-load-{date:%Y-%m-%d}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if errors or lost or mismatched or bad_usage:
        sys.exit(1)


if __name__ == "__main__":
    main()
