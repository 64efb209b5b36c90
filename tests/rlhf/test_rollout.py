import pytest
import torch

from trellis.rlhf.rollout import (
    build_sequences,
    hidden_scores,
    response_logprobs,
    reward_scores,
    sample_responses,
    score_rollout,
)


@pytest.fixture(scope="module")
def models(tiny_dirs):
    from trellis.checkpoint import load_causal_lm, load_reward_model

    policy_dir, reward_dir = tiny_dirs
    return load_causal_lm(policy_dir).eval(), load_reward_model(reward_dir).eval()


def _chat_ids(tokenizer, text):
    from trellis.eval.gold import render_chat_prompt

    return render_chat_prompt(tokenizer, text)


def test_build_sequences_layout():
    seq = build_sequences([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    assert seq.input_ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert seq.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert seq.response_tokens.tolist() == [[9, 10, 0], [11, 12, 13]]
    assert seq.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    # response token j of row b is predicted at prompt_len - 1 + j
    assert seq.logit_index[0, :2].tolist() == [2, 3] and seq.logit_index[1].tolist() == [0, 1, 2]
    sub = seq.select(torch.tensor([0]))
    assert sub.input_ids.shape == (1, 5) and sub.response_tokens.shape == (1, 2)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_a_fresh_forward(models, tokenizer, eos_ids, temperature, prompt_texts):
    from trellis.serving.engine import Engine

    policy, reward = models
    prompt_ids = [_chat_ids(tokenizer, p) for p in prompt_texts[:5]]
    engine = Engine(policy, tokenizer, max_batch_size=4)
    responses, ended = sample_responses(engine, prompt_ids, temperature, 1.0, 12, seed=123, stop_token_ids=eos_ids)
    assert all(1 <= len(r) <= 12 for r in responses)
    assert all(e == (r[-1] in eos_ids) for r, e in zip(responses, ended, strict=True))
    assert len({tuple(r) for r in responses}) > 1  # per-row seeds: rows are not copies of one draw

    batch = score_rollout(policy, policy, reward, reward, tokenizer, prompt_texts[:5], prompt_ids, responses, ended,
                          temperature, torch.device("cpu"), forward_batch_size=2)
    for b, (p, r) in enumerate(zip(prompt_ids, responses, strict=True)):
        with torch.no_grad():
            logits = policy(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : len(p) + len(r) - 1]
            expected = torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(r)[:, None])[:, 0]
            values = hidden_scores(reward, torch.tensor([p + r]), torch.ones(1, len(p) + len(r), dtype=torch.long))
        n = len(r)
        assert torch.allclose(batch.logprobs[b, :n], expected, atol=1e-5)
        assert torch.allclose(batch.ref_logprobs[b, :n], expected, atol=1e-5)
        assert (batch.logprobs[b, n:] == 0).all() and (batch.mask[b, n:] == 0).all()
        assert torch.allclose(batch.values[b, :n], values[0, len(p) - 1 : len(p) + n - 1], atol=1e-5)
    assert batch.entropy.shape == batch.logprobs.shape and (batch.entropy[batch.mask.bool()] > 0).all()
    # the same tokens through the training-path helper agree too
    again, _ = response_logprobs(policy, batch.sequences, temperature)
    assert torch.allclose(again, batch.logprobs, atol=1e-5)


def test_engine_logprobs_match_rollout_at_temperature_one(models, tokenizer, eos_ids, prompt_texts):
    from trellis.serving.engine import Engine
    from trellis.serving.sampling import SamplingParams

    policy, reward = models
    prompt_ids = [_chat_ids(tokenizer, p) for p in prompt_texts[:3]]
    outs = Engine(policy, tokenizer, max_batch_size=4).generate(
        prompt_ids, [SamplingParams(temperature=1.0, max_tokens=10, seed=i, logprobs=0, stop_token_ids=eos_ids)
                     for i in range(3)])
    responses = [o.token_ids for o in outs]
    ended = [o.finish_reason == "stop" for o in outs]
    batch = score_rollout(policy, policy, reward, reward, tokenizer, prompt_texts[:3], prompt_ids, responses, ended,
                          1.0, torch.device("cpu"))
    for b, o in enumerate(outs):
        assert torch.allclose(batch.logprobs[b, : len(o.token_ids)], torch.tensor(o.logprobs), atol=1e-4)


def test_reward_score_is_the_sequence_classifier_logit(models, tokenizer, prompt_texts):
    _, reward = models
    prompts, responses = prompt_texts[:3], ["Aye.", "No, my lord, not I.", ""]
    scores = reward_scores(reward, tokenizer, prompts, responses, torch.device("cpu"), batch_size=2)
    for p, r, s in zip(prompts, responses, scores, strict=True):
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                             tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert torch.allclose(reward(input_ids=ids).logits[0, 0], s, atol=1e-5)


class _TwoAxisHead(torch.nn.Linear):
    """A multi-objective score head as trellis.reward.heads builds one: per_axis outputs, one combined."""

    spec = {"heads": ["helpfulness", "harmlessness"], "weights": {"helpfulness": 1.0, "harmlessness": 2.0}}

    def per_axis(self, hidden):
        return super().forward(hidden)

    def forward(self, hidden):
        return (self.per_axis(hidden) * torch.tensor([1.0, 2.0])).sum(-1, keepdim=True)


def test_multi_objective_reward_reports_each_axis(tiny_dirs, tokenizer, prompt_texts):
    import copy

    from trellis.checkpoint import load_reward_model

    reward = copy.deepcopy(load_reward_model(tiny_dirs[1]).eval())
    torch.manual_seed(0)
    reward.score = _TwoAxisHead(reward.score.in_features, 2, bias=False)
    axes: dict = {}
    prompts, responses = prompt_texts[:3], ["Aye.", "No, my lord.", "Hear me."]
    scores = reward_scores(reward, tokenizer, prompts, responses, torch.device("cpu"), batch_size=2, per_axis=axes)
    assert sorted(axes) == ["harmlessness", "helpfulness"]
    assert torch.allclose(scores, axes["helpfulness"] + 2.0 * axes["harmlessness"], atol=1e-5)
    assert not torch.allclose(axes["helpfulness"], axes["harmlessness"])
    plain: dict = {}
    reward_scores(load_reward_model(tiny_dirs[1]).eval(), tokenizer, prompts, responses, torch.device("cpu"),
                  per_axis=plain)
    assert plain == {}  # a single-head reward model has no axes to report


def test_right_padded_rows_need_no_mask_except_under_flash_attention(models):
    from trellis.rlhf.rollout import right_padded_mask

    policy, _ = models
    mask = torch.ones(2, 3, dtype=torch.long)
    assert right_padded_mask(policy, mask) is None  # sdpa: causal alone hides the trailing padding
    flash = type("Flash", (), {"config": type("C", (), {"_attn_implementation": "flash_attention_2"})()})()
    assert right_padded_mask(flash, mask) is mask
