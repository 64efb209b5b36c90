"""Prefill without padding, chunked prefill, prefix sharing and the in-place decode cache."""

from __future__ import annotations

import pytest
import torch

from trellis.serving.engine import Engine
from trellis.serving.kv import SlabLayer
from trellis.serving.prefix_cache import PrefixCache
from trellis.serving.sampling import SamplingParams

PROMPTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All",
    "You are all resolved rather to die than to famish? Speak, speak.",
    "Let us kill him",
    "We know't, we know't. First, you know Caius Marcius is chief enemy to the people.",
]
SHARED = "First Citizen:\nBefore we proceed any further, hear me speak. All: Speak, speak. "


def _hf_greedy(model, tokenizer, prompt, max_new_tokens, eos):
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(
        input_ids=ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
    )
    gen = out[0, ids.shape[1] :].tolist()
    for i, t in enumerate(gen):
        if t in eos:
            return gen[: i + 1]
    return gen


class ForwardLog:
    """Input shapes of every model forward: (batch, tokens); tokens > 1 (or batch 1 of a prompt) is prefill."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self._hook = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        self.shapes.append(tuple(kwargs["input_ids"].shape))

    def close(self):
        self._hook.remove()


@pytest.fixture
def forward_log(model):
    log = ForwardLog(model)
    yield log
    log.close()


def _lengths(tokenizer, prompts):
    return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def test_prompts_are_packed_into_one_forward_without_padding(model, tokenizer, forward_log):
    engine = Engine(model, tokenizer, max_prefill_tokens=4096)
    assert engine.packing  # a Llama with SDPA honours the packed 4D mask
    forward_log.shapes.clear()
    outs = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6))
    prefills = [s for s in forward_log.shapes if s[1] > 1]
    # left padding would give (5, longest); one packed forward computes exactly the real prompt tokens
    assert prefills == [(1, sum(_lengths(tokenizer, PROMPTS)))]
    for p, o in zip(PROMPTS, outs, strict=True):
        assert o.token_ids == _hf_greedy(model, tokenizer, p, 6, engine.eos_token_ids)


def test_without_packing_each_prompt_is_its_own_forward(model, tokenizer, forward_log):
    engine = Engine(model, tokenizer, max_prefill_tokens=4096)
    engine._packing = False  # what a model that ignores custom masks (flash attention) gets
    prompts = [p for p in PROMPTS if p != "All"]
    forward_log.shapes.clear()
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    # the first step prefills every prompt, one unpadded forward each, before any decode
    assert forward_log.shapes[: len(prompts)] == [(1, n) for n in _lengths(tokenizer, prompts)]
    for p, o in zip(prompts, outs, strict=True):
        assert o.token_ids == _hf_greedy(model, tokenizer, p, 6, engine.eos_token_ids)


def test_chunked_prefill_caps_tokens_per_step_and_decodes_keep_going(model, tokenizer, forward_log):
    cap = 8
    engine = Engine(model, tokenizer, max_batch_size=4, max_prefill_tokens=cap)
    prompts = [PROMPTS[3], SHARED * 2, PROMPTS[0]]  # a short one first, then a long one (> 5 chunks)
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (30, 5, 5)]
    assert engine.packing  # (its one-time check runs forwards of its own)
    forward_log.shapes.clear()
    outs = engine.generate(prompts, params)
    shapes = forward_log.shapes
    prefill_at = [i for i, s in enumerate(shapes) if s[0] == 1 and s[1] > 1]
    assert all(shapes[i][1] <= cap for i in prefill_at)
    # the short prompt decodes while the long one is still being prefilled, chunk after chunk
    decodes_between = [s for s in shapes[prefill_at[0] : prefill_at[-1]] if s[1] == 1]
    assert len(decodes_between) >= len(prefill_at) - 2
    ref = [
        _hf_greedy(model, tokenizer, p, sp.max_tokens, set()) for p, sp in zip(prompts, params, strict=True)
    ]
    assert [o.token_ids for o in outs] == ref


def test_shared_prefix_is_computed_once(model, tokenizer):
    engine = Engine(model, tokenizer)
    first, second = SHARED + "Speak.", SHARED + "You are all resolved."
    sp = SamplingParams(temperature=0, max_tokens=8)
    try:
        assert engine.submit(first, sp).result(timeout=60).token_ids
        before = engine.stats["prefill_tokens"]
        out = engine.submit(second, sp).result(timeout=60)
        computed = engine.stats["prefill_tokens"] - before
        ids_first, ids_second = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in (first, second))
        shared = next(i for i, (a, b) in enumerate(zip(ids_first, ids_second, strict=False)) if a != b)
        assert shared >= 16
        assert computed == len(ids_second) - shared  # without prefix sharing: all of it
        assert engine.prefix_cache.hits == 1
        assert out.token_ids == _hf_greedy(model, tokenizer, second, 8, engine.eos_token_ids)

        # a weight changed in place (an optimizer step): the cached keys/values are stale and forgotten
        with torch.no_grad():
            next(model.parameters()).mul_(1.0)
        before = engine.stats["prefill_tokens"]
        engine.submit(second, sp).result(timeout=60)
        assert engine.stats["prefill_tokens"] - before == len(ids_second)
    finally:
        engine.shutdown()


def test_generate_shares_prefixes_within_a_call_only(model, tokenizer):
    # batch size 1: the second prompt is admitted after the first is done, so its prefix is cached by then
    engine = Engine(model, tokenizer, max_batch_size=1)
    prompts = [SHARED + "Speak.", SHARED + "Hear me."]
    sp = SamplingParams(temperature=0, max_tokens=5)
    total = sum(_lengths(tokenizer, prompts))
    outs = engine.generate(prompts, sp)
    assert engine.stats["prefill_tokens"] < total - 16
    assert [o.token_ids for o in outs] == [
        _hf_greedy(model, tokenizer, p, 5, engine.eos_token_ids) for p in prompts
    ]
    before = engine.stats["prefill_tokens"]
    engine.generate(prompts[:1], sp)  # a new call starts from nothing (the weights may have been trained)
    assert engine.stats["prefill_tokens"] - before == _lengths(tokenizer, prompts[:1])[0]


def test_prompts_arriving_together_compute_their_shared_prefix_once(model, tokenizer):
    engine = Engine(model, tokenizer)
    prompts = [SHARED + tail for tail in ("Speak.", "Hear me.", "We know't.", "Caius Marcius")]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = min(next(i for i, (a, b) in enumerate(zip(ids[0], x, strict=False)) if a != b) for x in ids[1:])
    assert shared >= 16
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    # the first prompt computes the shared part; the others wait one step and compute only their own tails
    # (without that: all 4 in one forward, every token of every prompt computed)
    assert engine.stats["prefill_tokens"] <= sum(len(x) for x in ids) - 3 * shared
    assert [o.token_ids for o in outs] == [
        _hf_greedy(model, tokenizer, p, 6, engine.eos_token_ids) for p in prompts
    ]


def test_prefix_cache_keeps_to_its_byte_budget():
    def kv(n):
        return [(torch.zeros(1, 2, n, 4), torch.zeros(1, 2, n, 4))]  # 2 * 2*n*4 floats = 64 n bytes

    cache = PrefixCache(max_bytes=64 * 50)
    cache.insert(list(range(30)), kv(30))
    cache.insert([7] * 20, kv(20))
    assert len(cache.entries) == 2
    n, got = cache.lookup(list(range(25)) + [99])
    assert n == 25 and got[0][0].shape[2] == 25
    cache.insert([8] * 20, kv(20))  # over budget: the least recently used ([7] * 20) goes
    assert tuple([7] * 20) not in cache.entries and tuple(range(30)) in cache.entries
    assert cache.bytes <= cache.max_bytes
    assert cache.lookup([5] * 30) == (0, None)
    assert cache.lookup(list(range(5)) + [1, 2])[0] == 0  # below the minimum worth reusing


def test_decode_writes_into_a_preallocated_cache(model, tokenizer):
    from trellis.serving.scheduler import Scheduler

    engine = Engine(model, tokenizer)
    sched = Scheduler(engine, None)
    with torch.inference_mode():
        for i, p in enumerate(PROMPTS[:3]):
            sched.admit(engine._make_row(engine.encode(p), SamplingParams(temperature=0, max_tokens=20), i))
        sched.prefill()
        layer = sched.batch.cache.layers[0]
        assert isinstance(layer, SlabLayer)
        buffer = layer.kbuf.data_ptr()
        width = layer.keys.shape[2]
        for _ in range(5):
            sched.batch.step()
        # the same buffer, 5 columns longer: no copy of the whole cache per step
        assert layer.kbuf.data_ptr() == buffer and layer.keys.shape[2] == width + 5


def test_models_whose_cache_rows_cannot_be_stacked_use_padded_groups(model, tokenizer, forward_log):
    # sliding-window caches (Mistral, Gemma) cannot be cut per row: prompts are prefilled as one padded group
    engine = Engine(model, tokenizer, max_batch_size=2)
    engine.stackable = False
    prompts = [p for p in PROMPTS if p != "All"]
    forward_log.shapes.clear()
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=6))
    lengths = _lengths(tokenizer, prompts)
    assert forward_log.shapes[0] == (2, max(lengths[:2]))
    for p, o in zip(prompts, outs, strict=True):
        assert o.token_ids == _hf_greedy(model, tokenizer, p, 6, engine.eos_token_ids)


def test_decode_masks_are_one_growing_buffer_and_absent_without_padding(model, tokenizer):
    masks = []

    def note(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:  # decode steps
            masks.append(kwargs["attention_mask"])

    hook = model.register_forward_pre_hook(note, with_kwargs=True)
    try:
        engine = Engine(model, tokenizer)
        assert engine.prebuilt_decode_mask  # the tiny Llama runs sdpa over plain layers
        engine.generate([PROMPTS[0]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
        assert len(masks) == 4 and all(m is None for m in masks)  # one row: nothing to mask
        masks.clear()
        prompts = PROMPTS[:3]
        engine.generate(prompts, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    finally:
        hook.remove()
    assert len(masks) == 4
    assert all(m.dtype == torch.bool and m.shape[1:3] == (1, 1) for m in masks)
    # a view into one buffer that widens by a column a step, not a new tensor per step
    assert len({m.untyped_storage().data_ptr() for m in masks}) == 1
    assert [m.shape[-1] for m in masks] == [masks[0].shape[-1] + i for i in range(4)]
    lengths = _lengths(tokenizer, prompts)
    first = masks[0][:, 0, 0]
    for row, n in zip(first, lengths, strict=True):  # left padding, then the prompt and one generated token
        assert row.tolist() == [False] * (max(lengths) - n) + [True] * (n + 1)


def test_pad_mask_grows_past_its_spare_columns_selects_and_trims():
    from trellis.serving.kv import SLAB_SPARE, PadMask

    def expected(pads, width):
        return [[False] * p + [True] * (width - p) for p in pads]

    mask = PadMask([3, 0, 5], 6, "cpu")
    assert mask.padded and mask.tensor.tolist() == expected([3, 0, 5], 6)
    for _ in range(SLAB_SPARE + 3):  # past the buffer's spare columns: it is rebuilt, same pattern
        mask.grow(1)
    width = 6 + SLAB_SPARE + 3
    assert mask.tensor.tolist() == expected([3, 0, 5], width)
    mask.select([0, 2], torch.tensor([0, 2]))
    assert mask.trim() == 3 and mask.pads == [0, 2] and mask.width == width - 3
    assert mask.tensor.tolist() == expected([0, 2], width - 3)
    mask.select([0], torch.tensor([0]))
    assert mask.trim() == 0 and not mask.padded
