"""The lean decode step against the model's own forward, and the engine with it on and off."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.serving.conftest import build_model

from trellis.serving.engine import Engine
from trellis.serving.lean_decode import LeanLlamaDecode, lean_decode_step
from trellis.serving.sampling import SamplingParams

PROMPTS = ["First Citizen:\nBefore we", "All", "You are all resolved rather to die than to famish?", "We know't"]


def _left_padded(tokenizer, prompts):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("padded", [True, False])
def test_lean_step_equals_the_model_forward(model, tokenizer, padded):
    from transformers import DynamicCache

    step = lean_decode_step(model)
    assert step is not None
    prompts = PROMPTS if padded else [PROMPTS[1]] * 3  # equal lengths: no mask at all
    ids, mask = _left_padded(tokenizer, prompts)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True)
        lean_cache = copy.deepcopy(cache)
        nxt, next_pos = out.logits[:, -1].argmax(-1), pos[:, -1] + 1
        for _ in range(6):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            ref = model(input_ids=nxt[:, None], attention_mask=mask if padded else None,
                        position_ids=next_pos[:, None], past_key_values=cache, use_cache=True).logits[:, -1].float()
            got = step(nxt[:, None], mask.bool()[:, None, None, :] if padded else None, next_pos[:, None], lean_cache)
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
            for a, b in zip(cache.layers, lean_cache.layers, strict=True):
                torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=0)
            nxt, next_pos = ref.argmax(-1), next_pos + 1


def test_engine_tokens_are_the_same_with_and_without_the_lean_step(model, tokenizer, monkeypatch):
    # batch 2 over 4 prompts: rows join and leave a running batch, sampled and greedy rows side by side
    params = [SamplingParams(temperature=0.9, top_p=0.9, max_tokens=n, seed=i, logprobs=1)
              for i, n in enumerate([12, 5, 16, 9])]
    params[1] = SamplingParams(temperature=0, max_tokens=14, logprobs=1)
    lean = Engine(model, tokenizer, max_batch_size=2)
    plain = Engine(model, tokenizer, max_batch_size=2, lean_decode=False)
    assert lean.lean_decode is not None and plain.lean_decode is None
    calls = {"n": 0}
    real = LeanLlamaDecode.__call__

    def counted(self, *args):
        calls["n"] += 1
        return real(self, *args)

    monkeypatch.setattr(LeanLlamaDecode, "__call__", counted)
    got, want = lean.generate(PROMPTS, params), plain.generate(PROMPTS, params)
    assert calls["n"] > 10
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)


def test_the_lean_step_reads_the_current_weights(tokenizer):
    # PPO updates the policy between rollouts: the step must see the new weights without a refresh
    from trellis.data.chat_template import IM_END

    model = build_model(len(tokenizer), [tokenizer.convert_tokens_to_ids(IM_END)], tokenizer.pad_token_id, seed=3)
    engine = Engine(model, tokenizer, max_batch_size=4)
    plain = Engine(model, tokenizer, max_batch_size=4, lean_decode=False)
    greedy = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    before = engine.generate(PROMPTS, greedy)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.mul_(-3.0)
    after = engine.generate(PROMPTS, greedy)
    assert [o.token_ids for o in after] == [o.token_ids for o in plain.generate(PROMPTS, greedy)]
    assert [o.token_ids for o in after] != [o.token_ids for o in before]


def test_models_it_does_not_reproduce_keep_their_forward(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from trellis.data.chat_template import IM_END

    eos = [tokenizer.convert_tokens_to_ids(IM_END)]
    eager = build_model(len(tokenizer), eos, tokenizer.pad_token_id)
    eager.config._attn_implementation = "eager"
    assert lean_decode_step(eager) is None
    wrapped = build_model(len(tokenizer), eos, tokenizer.pad_token_id)
    wrapped.peft_config = {"default": object()}
    assert lean_decode_step(wrapped) is None
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=len(tokenizer))).eval()
    assert lean_decode_step(gpt2) is None
    assert Engine(gpt2, tokenizer).lean_decode is None


def test_a_hooked_model_decodes_through_its_forward(model, tokenizer):
    # forward hooks promise that the model's forward runs: with one registered, decode steps call the model
    engine = Engine(model, tokenizer, max_batch_size=4)
    shapes = []
    hook = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                           with_kwargs=True)
    try:
        hooked = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    finally:
        hook.remove()
    assert sum(1 for s in shapes if s[1] == 1) == 5  # the first token comes from prefill, 5 decode steps
    plain = engine.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
    assert [o.token_ids for o in hooked] == [o.token_ids for o in plain]


@pytest.mark.parametrize("variant", ["biases", "bf16", "one_kv_head_per_query_head", "tied_embeddings"])
def test_model_variants_decode_to_the_same_tokens(tokenizer, variant):
    from transformers import LlamaConfig, LlamaForCausalLM

    options = {"biases": dict(attention_bias=True, mlp_bias=True), "one_kv_head_per_query_head":
               dict(num_key_value_heads=4), "tied_embeddings": dict(tie_word_embeddings=True)}.get(variant, {})
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                         vocab_size=len(tokenizer), max_position_embeddings=256, initializer_range=0.2,
                         pad_token_id=tokenizer.pad_token_id, **{"num_key_value_heads": 2, **options})
    model = LlamaForCausalLM(config).eval().to(torch.bfloat16 if variant == "bf16" else torch.float32)
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=0)
    lean = Engine(model, tokenizer, max_batch_size=4)
    assert lean.lean_decode is not None
    got = lean.generate(PROMPTS, greedy)
    want = Engine(model, tokenizer, max_batch_size=4, lean_decode=False).generate(PROMPTS, greedy)
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    for g, w in zip(got, want, strict=True):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-5)
