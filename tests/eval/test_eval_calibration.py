import json
import math
import random

import pytest

from trellis.errors import TrellisError
from trellis.eval.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    items_from_samples,
    nll,
    write_temperature,
)


def _synthetic(n: int, true_t: float, seed: int = 0):
    """Choice scores whose gold answer is drawn from softmax(scores / true_t): calibrated at T = true_t."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        scores = [rng.gauss(0, 4) for _ in range(4)]
        probs = [math.exp(s / true_t) for s in scores]
        gold = rng.choices(range(4), weights=probs)[0]
        items.append((scores, gold))
    return items


def test_temperature_scaling_recovers_the_true_temperature():
    items = _synthetic(4000, true_t=2.5)
    t = fit_temperature(items)
    assert t == pytest.approx(2.5, rel=0.1)
    assert nll(items, t) < nll(items, 1.0)
    # at T=1 the scores are overconfident; at the fitted T the error is small
    assert expected_calibration_error(items) > 0.1 > 0.03 > expected_calibration_error(items, t)


def test_calibrate_fits_on_one_half_and_reports_the_other():
    out = calibrate({"a": _synthetic(600, 3.0, seed=1), "b": _synthetic(400, 3.0, seed=2)})
    assert out["fit_documents"] == 500 and out["a"]["n"] == 300 and out["all"]["n"] == 500
    assert out["choice_temperature"] == pytest.approx(3.0, rel=0.25)
    for key in ("a", "b", "all"):
        assert out[key]["ece_choice_scaled"] < out[key]["ece"] and out[key]["nll_choice_scaled"] < out[key]["nll"]


def test_items_from_lm_eval_samples_skip_documents_without_one_gold():
    samples = [{"target": 1, "filtered_resps": [(-3.0, False), (-1.0, True)]},
               {"target": "x", "filtered_resps": [(-3.0, False), (-1.0, True)]}]
    assert items_from_samples(samples) == [([-3.0, -1.0], 1)]
    with pytest.raises(TrellisError, match="no multiple-choice"):
        expected_calibration_error([])


def test_write_temperature_keeps_the_other_keys(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2], "temperature": 1.0}))
    write_temperature(tmp_path, 1.7)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {"eos_token_id": [1, 2], "temperature": 1.7}
    (tmp_path / "generation_config.json").write_text("{broken")
    with pytest.raises(TrellisError, match="generation_config.json"):
        write_temperature(tmp_path, 1.0)


def _token_world(n: int, true_t: float, seed: int = 0, vocab: int = 6, tokens: int = 3):
    """Documents of 4 choices, each a few tokens with random logits; the gold choice is drawn from the
    softmax over choices of their log-likelihoods under softmax(logits / true_t): a model whose token
    temperature should be true_t. Returns (items at T = 1, grid items over TOKEN_TEMPERATURES)."""
    from trellis.eval.calibration import TOKEN_TEMPERATURES

    rng = random.Random(seed)

    def loglik(logits, token, t):
        top = max(z / t for z in logits)
        return logits[token] / t - top - math.log(sum(math.exp(z / t - top) for z in logits))

    items, grid_items = [], []
    for _ in range(n):
        choices = [[([rng.gauss(0, 2) for _ in range(vocab)], rng.randrange(vocab)) for _ in range(tokens)]
                   for _ in range(4)]
        at = [[sum(loglik(z, y, t) for z, y in c) for t in TOKEN_TEMPERATURES] for c in choices]
        true = [sum(loglik(z, y, true_t) for z, y in c) for c in choices]
        gold = rng.choices(range(4), weights=[math.exp(v - max(true)) for v in true])[0]
        items.append(([sum(loglik(z, y, 1.0) for z, y in c) for c in choices], gold))
        grid_items.append((at, gold))
    return items, grid_items


def test_token_temperature_is_fitted_on_the_grid_and_judged_on_the_other_half():
    from trellis.eval.calibration import TOKEN_TEMPERATURES

    items, grid_items = _token_world(3000, true_t=2.0, seed=3)
    out = calibrate({"t": items}, {"t": grid_items})
    assert out["temperature"] == pytest.approx(2.0, rel=0.2) and out["temperature_at_limit"] is False
    assert out["temperature"] in TOKEN_TEMPERATURES and 1.0 in TOKEN_TEMPERATURES
    assert out["t"]["nll_scaled"] < out["t"]["nll"] and out["t"]["ece_scaled"] < out["t"]["ece"]
    assert min(out["nll_by_temperature"].values()) == pytest.approx(out["nll_by_temperature"][f"{out['temperature']:.4g}"])
    # a model sharper than the grid allows: the fit sits on the edge and says so
    items, grid_items = _token_world(400, true_t=40.0, seed=4)
    edge = calibrate({"t": items}, {"t": grid_items})
    assert edge["temperature"] == max(TOKEN_TEMPERATURES) and edge["temperature_at_limit"] is True
    with pytest.raises(TrellisError, match="rescored at the token temperatures"):
        calibrate({"t": items}, {"t": grid_items[:-1]})


def test_choice_temperature_reports_hitting_its_range():
    # the gold answer is always the least likely choice: the larger T, the better; the fit runs into the limit
    items = [(scores, min(range(4), key=scores.__getitem__)) for scores, _ in _synthetic(200, 1.0, seed=5)]
    out = calibrate({"a": items})
    assert out["choice_temperature_at_limit"] is True and "temperature" not in out
    assert calibrate({"a": _synthetic(500, 3.0)})["choice_temperature_at_limit"] is False


def test_grid_items_are_looked_up_by_request():
    from trellis.eval.calibration import grid_items_from_samples

    samples = [{"doc_id": 0, "target": 1, "filtered_resps": [(-3.0, False), (-1.0, True)],
                "arguments": [("ctx", " a"), ("ctx", " b")]},
               {"doc_id": 1, "target": None, "filtered_resps": [(-3.0, False)], "arguments": [("ctx", " c")]}]
    tempered = {("ctx", " a"): [-4.0, -3.0], ("ctx", " b"): [-2.0, -1.0]}
    assert grid_items_from_samples(samples, tempered) == [([[-4.0, -3.0], [-2.0, -1.0]], 1)]
    with pytest.raises(TrellisError, match="document 0 was not rescored"):
        grid_items_from_samples(samples, {})
