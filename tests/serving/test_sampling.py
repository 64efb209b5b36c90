"""Sampling functions on known logits, checked by their statistics over many draws."""

from __future__ import annotations

import math

import pytest
import torch

from trellis.serving.sampling import (
    SamplingParams,
    apply_min_p,
    apply_penalties,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    choose_tokens,
    sample_from_logits,
)

PROBS = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
LOGITS = PROBS.log()
N = 20000


def _frequencies(logits: torch.Tensor, n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g)
    tokens = sample_from_logits(logits.expand(n, -1), u)
    return torch.bincount(tokens, minlength=logits.shape[-1]).float() / n


def _close(freq: torch.Tensor, expected: torch.Tensor) -> None:
    # 5 standard errors of a binomial proportion
    tol = 5 * torch.sqrt(expected * (1 - expected) / N) + 1e-9
    assert ((freq - expected).abs() <= tol).all(), (freq, expected)


def test_plain_sampling_follows_softmax():
    _close(_frequencies(LOGITS), PROBS)


def test_temperature_divides_logits():
    for t in (0.5, 2.0):
        out = apply_temperature(LOGITS[None], t)
        assert torch.allclose(out, LOGITS[None] / t)
        _close(_frequencies(out), torch.softmax(LOGITS / t, -1))
    # temperature 0 rows are left alone (they are argmaxed)
    assert torch.equal(apply_temperature(LOGITS[None], 0.0), LOGITS[None])


def test_top_k_keeps_k_most_likely():
    out = apply_top_k(LOGITS[None], 2)
    assert torch.isinf(out[0, 2:]).all() and torch.isfinite(out[0, :2]).all()
    _close(_frequencies(out), torch.tensor([0.5, 0.2, 0, 0, 0]) / 0.7)
    assert torch.equal(apply_top_k(LOGITS[None], 0), LOGITS[None])


@pytest.mark.parametrize(
    ("p", "kept"),
    [(0.5, 1), (0.51, 2), (0.7, 2), (0.71, 3), (0.85, 3), (0.9, 4), (1.0, 5)],
)
def test_top_p_keeps_smallest_set_reaching_p(p, kept):
    # shuffle the vocabulary so that order in the vocabulary cannot matter
    perm = torch.tensor([3, 0, 4, 1, 2])
    out = apply_top_p(LOGITS[perm][None], p)[0]
    kept_probs = sorted(PROBS[perm][torch.isfinite(out)].tolist(), reverse=True)
    assert len(kept_probs) == kept
    assert kept_probs == sorted(PROBS.tolist(), reverse=True)[:kept]


def test_top_p_sampling_frequencies():
    out = apply_top_p(LOGITS[None], 0.8)
    _close(_frequencies(out), torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)


def test_min_p_drops_tokens_below_fraction_of_max():
    out = apply_min_p(LOGITS[None], 0.3)  # threshold 0.15: keeps 0.5, 0.2, 0.15
    assert torch.isfinite(out[0, :3]).all() and torch.isinf(out[0, 3:]).all()


def test_per_row_parameters_in_one_batch():
    logits = LOGITS.expand(3, -1)
    out = apply_top_k(logits, torch.tensor([1, 0, 3]))
    assert torch.isfinite(out).sum(-1).tolist() == [1, 5, 3]
    out = apply_top_p(logits, torch.tensor([0.5, 1.0, 0.7]))
    assert torch.isfinite(out).sum(-1).tolist() == [1, 5, 2]


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    counts = torch.tensor([[2, 1, 0, 0]])
    prompt = torch.tensor([[False, False, True, False]])
    rep = apply_penalties(logits, counts, prompt, repetition_penalty=2.0)
    assert rep.tolist() == [[1.0, -4.0, 0.5, 0.5]]
    pres = apply_penalties(logits, counts, prompt, presence_penalty=0.5)
    assert pres.tolist() == [[1.5, -2.5, 1.0, 0.5]]  # prompt tokens are not presence-penalized
    freq = apply_penalties(logits, counts, prompt, frequency_penalty=0.5)
    assert freq.tolist() == [[1.0, -2.5, 1.0, 0.5]]


def test_choose_tokens_greedy_and_seeded():
    logits = LOGITS.expand(2, -1).clone()
    greedy = SamplingParams(temperature=0)
    hot = SamplingParams(temperature=1.0, seed=7)
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(7)]
    first = choose_tokens(logits, [greedy, hot], gens)
    assert first[0].item() == 0
    again = choose_tokens(
        logits, [greedy, hot], [torch.Generator().manual_seed(0), torch.Generator().manual_seed(7)]
    )
    assert torch.equal(first, again)
    # the seeded row's draw does not depend on its neighbour
    alone = choose_tokens(logits[:1], [hot], [torch.Generator().manual_seed(7)])
    assert alone.item() == first[1].item()


def test_low_temperature_concentrates_on_argmax():
    freq = _frequencies(apply_temperature(LOGITS[None], 0.05))
    assert freq[0] > 0.99
    assert math.isclose(freq.sum().item(), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", 2.0),
        ("max_tokens", 0),
        ("max_tokens", -5),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
        ("logprobs", 50),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", float("nan")),
        ("seed", "x"),
    ],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_stop_accepts_a_single_string():
    assert SamplingParams(stop="\n").stop == ["\n"]


def test_batch_sampling_builds_settings_once_and_flags_the_steps_rows_need():
    from trellis.serving.sampling import BatchSampling

    greedy = SamplingParams(temperature=0)
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    fast = BatchSampling.of([greedy, greedy], gens[:2], "cpu")
    assert fast.all_greedy and fast.temperature is None and fast.repetition is None
    assert not fast.want_logprobs
    assert torch.equal(fast.choose(logits[:2]), logits[:2].argmax(-1))

    params = [greedy, SamplingParams(top_k=2, logprobs=3), SamplingParams(top_p=0.5, logprobs=0)]
    general = BatchSampling.of(params, gens, "cpu")
    assert not general.all_greedy and general.any_top_k and general.any_top_p and not general.any_min_p
    assert general.want_logprobs and general.max_top_logprobs == 3 and general.repetition is None
    tokens = general.choose(logits)
    assert tokens[0] == logits[0].argmax()  # a greedy row in the general path is still the argmax
    assert tokens[1] in logits[1].topk(2).indices
    penalized = BatchSampling.of([SamplingParams(frequency_penalty=1.0)], gens[:1], "cpu")
    assert penalized.frequency is not None and penalized.frequency.tolist() == [1.0]


def test_greedy_tokens_pick_the_first_of_tied_maxima_like_argmax():
    from trellis.serving.sampling import greedy_tokens

    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    logits[1, [7, 300, 999]] = 50.0  # a three-way tie: the first index wins
    logits[2] = 0.0  # all equal
    assert greedy_tokens(logits).tolist() == logits.argmax(-1).tolist()
    assert greedy_tokens(logits)[1] == 7 and greedy_tokens(logits)[2] == 0


def test_draws_ahead_are_the_per_step_stream():
    from trellis.serving.sampling import draws_ahead, uniforms

    for n in (1, 7, 64, 300):
        ahead = draws_ahead(torch.Generator().manual_seed(n), n)
        step = torch.Generator().manual_seed(n)
        assert torch.equal(ahead, torch.cat([uniforms([step]) for _ in range(n)]))
