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
    assert out["temperature"] == pytest.approx(3.0, rel=0.25)
    for key in ("a", "b", "all"):
        assert out[key]["ece_scaled"] < out[key]["ece"] and out[key]["nll_scaled"] < out[key]["nll"]


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
