"""Closed batches on a decode graph's static buffers: the same tokens as the running batch's own steps.

On CPU the graph decoder runs the same static steps without capture (`capture=False`); the CUDA test
replays real graphs and runs only where a GPU is.
"""

from __future__ import annotations

import pytest
import torch
from tests.serving.conftest import build_model

from trellis.serving import graph_decode
from trellis.serving.engine import Engine
from trellis.serving.graph_decode import DecodeGraph, GraphDecoder
from trellis.serving.sampling import SamplingParams

PROMPTS = ["First Citizen:\nBefore we", "All", "You are all resolved rather to die than to famish?", "We know't",
           "Speak, speak.", "Resolved. resolved."]


def _static_engine(model, tokenizer, **kw) -> Engine:
    engine = Engine(model, tokenizer, **kw)
    assert engine.lean_decode is not None and engine.graph_decoder is None  # no graphs on CPU by default
    engine.graph_decoder = GraphDecoder(engine.lean_decode, capture=False)
    return engine


def _mixed_params() -> list[SamplingParams]:
    # sampled and greedy rows, different lengths: rows finish at different steps and keep their slots
    params = [SamplingParams(temperature=0.9, top_p=0.9, max_tokens=n, seed=i, logprobs=2)
              for i, n in enumerate([12, 5, 16, 9, 20, 7])]
    params[1] = SamplingParams(temperature=0, max_tokens=14, logprobs=2)
    return params


def test_static_steps_give_the_running_batchs_tokens(model, tokenizer, monkeypatch):
    steps = {"n": 0}
    real = DecodeGraph.step

    def counted(self):
        steps["n"] += 1
        return real(self)

    monkeypatch.setattr(DecodeGraph, "step", counted)
    static = _static_engine(model, tokenizer, max_batch_size=8)
    plain = Engine(model, tokenizer, max_batch_size=8)
    got, want = static.generate(PROMPTS, _mixed_params()), plain.generate(PROMPTS, _mixed_params())
    assert steps["n"] >= 19  # the longest row's tokens after the first came from static steps
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.finish_reason == w.finish_reason
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
        assert [sorted(t) for t in g.top_logprobs] == [sorted(t) for t in w.top_logprobs]
    assert static.stats["generated_tokens"] == plain.stats["generated_tokens"]


def test_rows_that_stop_early_keep_their_slot_and_report_once(tokenizer):
    from trellis.data.chat_template import IM_END

    eos = tokenizer.convert_tokens_to_ids(IM_END)
    model = build_model(len(tokenizer), [eos], tokenizer.pad_token_id, seed=5)
    static = _static_engine(model, tokenizer, max_batch_size=8)
    plain = Engine(model, tokenizer, max_batch_size=8)
    # a stop token that the greedy rows will meet: each row's third greedy token
    probe = plain.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=3, ignore_eos=True))
    stops = sorted({c.token_ids[2] for c in probe})
    params = SamplingParams(temperature=0, max_tokens=24, stop_token_ids=stops, ignore_eos=True)
    got, want = static.generate(PROMPTS, params), plain.generate(PROMPTS, params)
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    assert [g.finish_reason for g in got] == [w.finish_reason for w in want]
    assert any(len(g.token_ids) < 24 for g in got) and len(got) == len(PROMPTS)


def test_batches_of_one_shape_reuse_one_graph_and_see_new_weights(model, tokenizer, monkeypatch):
    built = []
    real_init = DecodeGraph.__init__

    def counted(self, *args, **kw):
        built.append(args[1:3])
        real_init(self, *args, **kw)

    monkeypatch.setattr(DecodeGraph, "__init__", counted)
    static = _static_engine(model, tokenizer, max_batch_size=8)
    plain = Engine(model, tokenizer, max_batch_size=8)
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    static.generate(PROMPTS[:4], greedy)
    static.generate(PROMPTS[2:6], greedy)  # other prompts, the same rows and width bucket
    assert len(built) == 1 and built[0][0] == 4 and built[0][1] % graph_decode.WIDTH_BUCKET == 0
    with torch.no_grad():  # an in-place update, as PPO's optimizer makes: the buffers read it
        model.lm_head.weight.mul_(-1.0)
    try:
        assert [c.token_ids for c in static.generate(PROMPTS[:4], greedy)] == \
            [c.token_ids for c in plain.generate(PROMPTS[:4], greedy)]
        assert len(built) == 1
    finally:
        with torch.no_grad():
            model.lm_head.weight.mul_(-1.0)


def test_a_batch_that_is_not_closed_or_too_short_or_penalized_stays_dynamic(model, tokenizer, monkeypatch):
    frozen = []
    real = DecodeGraph.load
    monkeypatch.setattr(DecodeGraph, "load", lambda self, *a: (frozen.append(1), real(self, *a)))
    static = _static_engine(model, tokenizer, max_batch_size=2)
    plain = Engine(model, tokenizer, max_batch_size=2)
    # batch 2 over 6 prompts: rows keep joining until the last two, which then freeze
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    assert [c.token_ids for c in static.generate(PROMPTS, greedy)] == \
        [c.token_ids for c in plain.generate(PROMPTS, greedy)]
    assert len(frozen) == 1
    static.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=graph_decode.MIN_STEPS, ignore_eos=True))
    static.generate(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=12, repetition_penalty=1.3))
    assert len(frozen) == 1


def test_a_forward_hook_keeps_the_model_forward(model, tokenizer):
    static = _static_engine(model, tokenizer, max_batch_size=8)
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        static.generate(PROMPTS[:3], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    finally:
        handle.remove()
    assert len(calls) > 7 and not static.graph_decoder.graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_gives_the_eager_tokens(tokenizer):
    from trellis.data.chat_template import IM_END

    model = build_model(len(tokenizer), [tokenizer.convert_tokens_to_ids(IM_END)], tokenizer.pad_token_id,
                        seed=3).cuda()
    graphed = Engine(model, tokenizer, max_batch_size=8)
    eager = Engine(model, tokenizer, max_batch_size=8, cuda_graphs=False)
    assert graphed.graph_decoder is not None
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=0)
    got, want = graphed.generate(PROMPTS, greedy), eager.generate(PROMPTS, greedy)
    assert graphed.graph_decoder.captures == 1
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)


def test_rows_that_joined_at_different_steps_freeze_together(model, tokenizer):
    # a small prefill budget: prompts join over several steps, so at the freeze the rows are at different
    # token counts and the ones ahead finish (and go on drawing in their slots) before the others
    params = [SamplingParams(temperature=0.8, max_tokens=10, seed=i, ignore_eos=True) for i in range(len(PROMPTS))]
    static = _static_engine(model, tokenizer, max_batch_size=8, max_prefill_tokens=6)
    plain = Engine(model, tokenizer, max_batch_size=8, max_prefill_tokens=6)
    got, want = static.generate(PROMPTS, params), plain.generate(PROMPTS, params)
    assert static.stats["prefill_forwards"] > 3 and static.graph_decoder.graphs
    assert [g.token_ids for g in got] == [w.token_ids for w in want]


def test_graphs_beyond_the_byte_budget_are_dropped_oldest_first(model, tokenizer):
    static = _static_engine(model, tokenizer, max_batch_size=8)
    greedy = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    static.generate(PROMPTS[:2], greedy)
    static.generate(PROMPTS[:3], greedy)
    assert list(static.graph_decoder.graphs) == [(2, 64), (3, 64)]
    static.graph_decoder.max_bytes = 1  # only the newest fits
    static.generate(PROMPTS[:4], greedy)
    assert list(static.graph_decoder.graphs) == [(4, 64)]
