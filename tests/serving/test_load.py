"""A load test: a few hundred requests at concurrency 16 against a live server, each checked against its
own greedy reference, so a lost, failed or mixed-up response (another request's text) shows."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import openai
import torch

from trellis.config.serve import ServeConfig
from trellis.serving.engine import Engine
from trellis.serving.server import create_app

MODEL = "tiny"
SHARED = "First Citizen:\nBefore we proceed any further, hear me speak. "
WORDS = ["Speak", "famish", "Caius", "corn", "resolved", "enemy", "citizens", "price", "poor", "good"]


def _greedy_ref(model, tokenizer, ids, max_tokens, eos):
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=max_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    gen = out[0, len(ids) :].tolist()
    for i, t in enumerate(gen):
        if t in eos:
            return gen[: i + 1]
    return gen


def test_load_of_300_requests_at_concurrency_16(model, tokenizer, live_server):
    engine = Engine(model, tokenizer, max_batch_size=16)
    server = live_server(create_app(engine, tokenizer, MODEL, ServeConfig(max_queue=64)))
    rng = random.Random(0)
    # 60 distinct requests (half sharing a prefix, so the prefix cache is in play), each sent 5 times
    distinct = []
    for i in range(60):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + f" {i}:"
        if i % 2:
            text = SHARED + text
        chat = i % 3 == 0
        ids = (
            engine.chat_prompt_ids([{"role": "user", "content": text}])
            if chat
            else tokenizer(text, add_special_tokens=False)["input_ids"]
        )
        max_tokens = rng.randint(4, 24)
        ref = _greedy_ref(model, tokenizer, ids, max_tokens, engine.eos_token_ids)
        distinct.append({"text": text, "chat": chat, "max_tokens": max_tokens, "ref": ref})
    refs = [tokenizer.decode(d["ref"], skip_special_tokens=True) for d in distinct]
    assert len(set(refs)) >= 50  # distinct answers, so a response given to the wrong request shows
    jobs = [(i, k % 2 == 1) for i in range(60) for k in range(5)]  # (request, stream?)
    rng.shuffle(jobs)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def send(job):
        i, stream = job
        d = distinct[i]
        kw = {"model": MODEL, "max_tokens": d["max_tokens"], "temperature": 0}
        if d["chat"]:
            messages = [{"role": "user", "content": d["text"]}]
            if stream:
                chunks = client.chat.completions.create(messages=messages, stream=True, **kw)
                return i, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), None
            r = client.chat.completions.create(messages=messages, **kw)
            return i, r.choices[0].message.content, r.usage.completion_tokens
        if stream:
            chunks = client.completions.create(prompt=d["text"], stream=True, **kw)
            return i, "".join(c.choices[0].text for c in chunks), None
        r = client.completions.create(prompt=d["text"], **kw)
        return i, r.choices[0].text, r.usage.completion_tokens

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, jobs))
    assert len(results) == len(jobs) == 300
    wrong = [
        (i, text, refs[i])
        for i, text, _ in results
        if text != refs[i]  # the text must be this request's own greedy answer
    ]
    assert not wrong, wrong[:3]
    for i, _, used in results:
        if used is not None:
            assert used == len(distinct[i]["ref"])
    assert engine.prefix_cache.hits > 0
    engine.shutdown()
