"""The engine against `model.generate`, and its stops, seeds, logprobs and streaming path."""

from __future__ import annotations

import asyncio

import pytest
import torch

from trellis.serving.engine import Engine
from trellis.serving.sampling import SamplingParams

PROMPTS = [
    "First Citizen:\nBefore we",
    "All",
    "You are all resolved rather to die than to famish? Speak, speak.",
    "Let us kill him, and we'll have corn",
    "We know't",
]


def _hf_greedy(model, tokenizer, prompts, max_new_tokens):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    out = model.generate(
        **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
    )
    return [row[enc["input_ids"].shape[1] :].tolist() for row in out]


def _until_eos(ids, eos):
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


@pytest.mark.parametrize("max_batch_size", [16, 2])
def test_greedy_matches_model_generate(model, tokenizer, max_batch_size):
    # different lengths, and batch 2 over 5 prompts, make rows join a running batch and leave it mid-flight
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size)
    lengths = [24, 7, 15, 24, 10]
    outs = engine.generate(PROMPTS, [SamplingParams(temperature=0, max_tokens=n) for n in lengths])
    ref = _hf_greedy(model, tokenizer, PROMPTS, 24)
    for o, r, p, n in zip(outs, ref, PROMPTS, lengths, strict=True):
        assert o.token_ids == _until_eos(r[:n], engine.eos_token_ids)
        assert o.prompt_token_ids == tokenizer(p, add_special_tokens=False)["input_ids"]
        assert o.finish_reason == ("length" if len(o.token_ids) == n else "stop")


def test_tokens_in_flight_cap_bounds_the_running_batch(model, tokenizer, monkeypatch):
    from trellis.serving import scheduler as sched_mod

    lengths = [24, 7, 15, 24, 10]
    params = [SamplingParams(temperature=0, max_tokens=n) for n in lengths]
    free = Engine(model, tokenizer, max_batch_size=16).generate(PROMPTS, params)
    cap = 60  # about two rows' reservations: the five prompts must run in several waves
    engine = Engine(model, tokenizer, max_batch_size=16, max_tokens_in_flight=cap)
    peaks: list[tuple[int, int]] = []  # (rows admitted, tokens they reserve) at each step
    original = sched_mod.Scheduler.prefill

    def prefill(self):
        peaks.append((len(self.rows), self.tokens_reserved()))
        return original(self)

    monkeypatch.setattr(sched_mod.Scheduler, "prefill", prefill)
    capped = engine.generate(PROMPTS, params)
    assert [o.token_ids for o in capped] == [o.token_ids for o in free]
    assert max(n for n, _ in peaks) >= 2  # rows still batch together under the cap
    assert all(n == 1 or reserved <= cap for n, reserved in peaks)
    assert max(n for n, _ in peaks) < len(PROMPTS)


def test_a_request_larger_than_the_tokens_cap_runs_alone(model, tokenizer):
    engine = Engine(model, tokenizer, max_tokens_in_flight=8)
    outs = engine.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=12))
    assert [len(o.token_ids) for o in outs] and all(o.finish_reason for o in outs)
    with pytest.raises(ValueError, match="max_tokens_in_flight"):
        Engine(model, tokenizer, max_tokens_in_flight=0)


def test_token_id_prompts_and_training_mode_restored(model, tokenizer):
    engine = Engine(model, tokenizer)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    model.train()
    try:
        a = engine.generate(ids, SamplingParams(temperature=0, max_tokens=8))
        assert model.training
    finally:
        model.eval()
    b = engine.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=8))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert not any(p.requires_grad is False for p in model.parameters())  # weights untouched, still trainable


def test_stop_token_ids_and_stop_strings(model, tokenizer):
    engine = Engine(model, tokenizer)
    free = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=20))[0]
    stop_tok = free.token_ids[5]
    first = free.token_ids.index(stop_tok)
    o = engine.generate(
        [PROMPTS[0]], SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_tok])
    )[0]
    assert o.token_ids == free.token_ids[: first + 1]
    assert o.finish_reason == "stop" and o.stop_reason == stop_tok

    # a stop string taken from the middle of the free-running text
    text = free.text
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].isprintable())
    o = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=20, stop=[stop]))[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop
    assert o.text == text[: text.index(stop)]
    assert stop not in o.text
    assert free.token_ids[: len(o.token_ids)] == o.token_ids


def test_eos_ends_row_unless_ignored(model, tokenizer):
    engine = Engine(model, tokenizer)
    free = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=12))[0]
    # pretend the 4th generated token is an eos of the model
    engine.eos_token_ids = frozenset(engine.eos_token_ids | {free.token_ids[3]})
    o = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=12))[0]
    n = free.token_ids.index(free.token_ids[3]) + 1
    assert o.token_ids == free.token_ids[:n] and o.finish_reason == "stop" and o.stop_reason is None
    o = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert o.token_ids == free.token_ids and o.finish_reason == "length"


def test_seeded_sampling_is_reproducible_whatever_the_batch(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch_size=3)
    sp = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=16, seed=1234)
    alone = engine.generate([PROMPTS[2]], sp)[0].token_ids
    others = [SamplingParams(temperature=1.3, max_tokens=n, seed=n) for n in (3, 9, 20, 5)]
    mixed = engine.generate(PROMPTS[:2] + [PROMPTS[2]] + PROMPTS[3:], others[:2] + [sp] + others[2:])
    assert mixed[2].token_ids == alone
    other_seed = engine.generate([PROMPTS[2]], SamplingParams(temperature=1.0, max_tokens=16, seed=99))[0]
    assert other_seed.token_ids != alone


def test_logprobs_are_model_log_probabilities(model, tokenizer):
    engine = Engine(model, tokenizer)
    o = engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=4, logprobs=3))[0]
    ids = torch.tensor([o.prompt_token_ids + o.token_ids])
    with torch.no_grad():
        logp = model(ids).logits[0].log_softmax(-1)
    n = len(o.prompt_token_ids)
    expected = [logp[n - 1 + i, t].item() for i, t in enumerate(o.token_ids)]
    assert o.logprobs == pytest.approx(expected, abs=1e-4)
    assert len(o.top_logprobs) == 4 and all(len(d) == 3 for d in o.top_logprobs)
    # greedy: the chosen token is the most likely one
    assert all(max(d, key=d.get) == t for d, t in zip(o.top_logprobs, o.token_ids, strict=True))


def test_penalties_change_greedy_output(model, tokenizer):
    engine = Engine(model, tokenizer)
    plain = engine.generate([PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0]
    pen = engine.generate(
        [PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30, frequency_penalty=2.0, ignore_eos=True)
    )[0]
    assert plain.token_ids != pen.token_ids
    # a huge repetition penalty forbids any token of the prompt or output to repeat while others remain
    rep = engine.generate(
        [PROMPTS[1]], SamplingParams(temperature=0, max_tokens=30, repetition_penalty=1e6, ignore_eos=True)
    )[0]
    assert len(set(rep.token_ids)) == len(rep.token_ids)
    assert not set(rep.token_ids) & set(rep.prompt_token_ids)


def test_penalized_rows_joining_a_running_batch(model, tokenizer):
    # two plain rows run first; penalized rows join mid-flight and must match their solo runs
    pen = SamplingParams(
        temperature=0, max_tokens=10, frequency_penalty=1.5, repetition_penalty=1.3, ignore_eos=True
    )
    short = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    long = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    params = [short, long, pen, pen]
    solo = [
        Engine(model, tokenizer).generate([p], sp)[0].token_ids
        for p, sp in zip(PROMPTS, params, strict=False)
    ]
    mixed = Engine(model, tokenizer, max_batch_size=2).generate(PROMPTS[:4], params)
    assert [o.token_ids for o in mixed] == solo


def test_chat_prompt_ids_uses_chat_template(model, tokenizer):
    engine = Engine(model, tokenizer)
    ids = engine.chat_prompt_ids([{"role": "user", "content": "Speak."}])
    assert tokenizer.decode(ids) == "<|im_start|>user\nSpeak.<|im_end|>\n<|im_start|>assistant\n"


def test_submit_streams_the_same_tokens_as_generate(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch_size=2)
    try:
        sp = [SamplingParams(temperature=0, max_tokens=n) for n in (12, 5, 9)]
        handles = [engine.submit(p, s) for p, s in zip(PROMPTS[:3], sp, strict=True)]
        streamed = []
        for h in handles:
            deltas = list(h)
            ids = [t for d in deltas for t in d.token_ids]
            assert ids == h.result().token_ids
            assert "".join(d.text for d in deltas) == h.result().text
            streamed.append(ids)
        assert streamed == [o.token_ids for o in engine.generate(PROMPTS[:3], sp)]

        async def consume():
            h = engine.submit(PROMPTS[3], SamplingParams(temperature=0, max_tokens=6))
            return [t async for d in h for t in d.token_ids]

        ids = asyncio.run(consume())
        assert ids == engine.generate([PROMPTS[3]], SamplingParams(temperature=0, max_tokens=6))[0].token_ids
    finally:
        engine.shutdown()


def test_cancel_stops_a_stream(model, tokenizer):
    engine = Engine(model, tokenizer)
    try:
        h = engine.submit(PROMPTS[0], SamplingParams(temperature=0, max_tokens=200, ignore_eos=True))
        it = iter(h)
        next(it)
        h.cancel()
        rest = list(it)
        assert rest[-1].finish_reason == "abort"
        assert len(h.result().token_ids) < 200
    finally:
        engine.shutdown()


def test_a_failing_step_fails_its_requests_and_the_loop_survives(model, tokenizer, monkeypatch):
    from trellis.serving.batch import RunningBatch

    engine = Engine(model, tokenizer)
    real = RunningBatch._forward
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RunningBatch, "_forward", flaky)
    try:
        h = engine.submit(PROMPTS[0], SamplingParams(temperature=0, max_tokens=5))
        with pytest.raises(RuntimeError, match="boom"):
            h.result(timeout=30)
        ok = engine.submit(PROMPTS[1], SamplingParams(temperature=0, max_tokens=3)).result(timeout=30)
        assert len(ok.token_ids) == 3
    finally:
        engine.shutdown()


def test_greedy_fast_path_matches_the_general_path(model, tokenizer, monkeypatch):
    # a greedy row alone takes the argmax fast path; beside a sampled row it goes through the general one
    from trellis.serving import sampling

    draws = {"n": 0}
    real_draw = sampling.sample_from_logits

    def counted_draw(logits, u):
        draws["n"] += 1
        return real_draw(logits, u)

    monkeypatch.setattr(sampling, "sample_from_logits", counted_draw)
    engine = Engine(model, tokenizer)
    greedy = SamplingParams(temperature=0, max_tokens=12, logprobs=2, ignore_eos=True)
    hot = SamplingParams(temperature=1.0, top_k=5, max_tokens=12, seed=3, ignore_eos=True)
    alone = engine.generate([PROMPTS[0]], greedy)[0]
    assert draws["n"] == 0
    mixed = engine.generate([PROMPTS[0], PROMPTS[2]], [greedy, hot])[0]
    assert draws["n"] > 0
    assert mixed.token_ids == alone.token_ids
    assert mixed.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    assert [list(d) for d in mixed.top_logprobs] == [list(d) for d in alone.top_logprobs]


def test_rows_asking_different_logprobs_share_a_batch(model, tokenizer):
    engine = Engine(model, tokenizer)
    params = [
        SamplingParams(temperature=0, max_tokens=6, logprobs=k, ignore_eos=True) for k in (None, 0, 1, 4)
    ]
    outs = engine.generate(PROMPTS[:4], params)
    for o, sp in zip(outs, params, strict=True):
        solo = engine.generate([o.prompt_token_ids], sp)[0]
        assert o.token_ids == solo.token_ids
        if sp.logprobs is None:
            assert o.logprobs is None and o.top_logprobs is None
            continue
        assert o.logprobs == pytest.approx(solo.logprobs, abs=1e-4)
        if sp.logprobs == 0:
            assert o.top_logprobs is None
        else:
            assert all(len(d) == sp.logprobs for d in o.top_logprobs)
            assert [list(d) for d in o.top_logprobs] == [list(d) for d in solo.top_logprobs]
            assert all(max(d, key=d.get) == t for d, t in zip(o.top_logprobs, o.token_ids, strict=True))


def test_a_decode_step_copies_to_the_host_once(model, tokenizer, monkeypatch):
    # per-row `.item()`/`.tolist()` calls each wait for the device: a step makes one copy, whatever the rows ask
    from trellis.serving.scheduler import Scheduler

    engine = Engine(model, tokenizer)
    params = [
        SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
        SamplingParams(temperature=0, max_tokens=20, logprobs=3, frequency_penalty=0.5, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, max_tokens=20, logprobs=0, seed=1, ignore_eos=True),
    ]
    copies = {"n": 0}

    def counted(real):
        def method(self, *args, **kwargs):
            copies["n"] += 1
            return real(self, *args, **kwargs)

        return method

    with torch.inference_mode():
        sched = Scheduler(engine, None)
        for i, (p, sp) in enumerate(zip(PROMPTS, params, strict=False)):
            sched.admit(engine._make_row(engine.encode(p), sp, i))
        sched.prefill()
        monkeypatch.setattr(torch.Tensor, "tolist", counted(torch.Tensor.tolist))
        monkeypatch.setattr(torch.Tensor, "item", counted(torch.Tensor.item))
        for _ in range(5):
            before = copies["n"]
            sched.batch.step()
            assert copies["n"] - before == 1
    assert all(len(r.out_ids) == 6 for r in sched.batch.rows)


def test_generation_stops_at_the_model_context(model, tokenizer):
    engine = Engine(model, tokenizer)
    assert engine.max_context == 256
    prompt = (tokenizer(PROMPTS[2] * 20, add_special_tokens=False)["input_ids"] * 4)[:250]
    o = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0]
    assert len(o.token_ids) == 6 and o.finish_reason == "length"


def test_deltas_for_one_event_loop_go_in_one_wake_up():
    import threading

    from trellis.serving.request import RequestHandle, StreamDelta, push_deltas

    async def consume():
        loop = asyncio.get_running_loop()
        wakeups = {"n": 0}
        real = loop.call_soon_threadsafe

        def counted(*args):
            wakeups["n"] += 1
            return real(*args)

        loop.call_soon_threadsafe = counted
        handles = [RequestHandle(f"r{i}", loop) for i in range(3)]
        sync_handle = RequestHandle("sync", None)
        step = [(h, StreamDelta([i], str(i))) for i, h in enumerate([*handles, sync_handle])]
        # the engine's thread pushes one step's deltas for every request at once
        t = threading.Thread(target=push_deltas, args=(step,))
        t.start()
        t.join()
        got = [await asyncio.wait_for(h._async_q.get(), 5) for h in handles]
        return wakeups["n"], got, sync_handle._sync_q.get_nowait()

    wakeups, got, sync_delta = asyncio.run(consume())
    assert wakeups == 1
    assert [d.token_ids for d in got] == [[0], [1], [2]]
    assert sync_delta.token_ids == [3]


def test_uniforms_drawn_ahead_give_the_tokens_of_per_step_draws(model, tokenizer, monkeypatch):
    # batch 2 over 5 prompts: rows join mid-flight and start their tables from their own first column
    from trellis.serving.batch import RunningBatch
    from trellis.serving.sampling import BatchSampling

    params = [SamplingParams(temperature=1.0, top_p=0.9, max_tokens=n, seed=i) for i, n in enumerate([9, 4, 12, 6, 8])]
    ahead = Engine(model, tokenizer, max_batch_size=2).generate(PROMPTS, params)

    def drawing_per_step(self, start, stop):
        rows = self.rows[start:stop]
        return BatchSampling.of([r.params for r in rows], [r.generator for r in rows], self.e.device)

    monkeypatch.setattr(RunningBatch, "_sampling_of", drawing_per_step)
    per_step = Engine(model, tokenizer, max_batch_size=2).generate(PROMPTS, params)
    assert [o.token_ids for o in ahead] == [o.token_ids for o in per_step]
    assert len({tuple(o.token_ids) for o in ahead}) > 1
