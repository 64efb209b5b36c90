import json
import math

import pytest
from rlhf_helpers import run_killed_after_step
from rlhf_helpers import tiny_rlhf_config as tiny_config

from trellis.config import WorldConfig, load_config
from trellis.errors import TrellisError
from trellis.rlhf.kl import (
    AdaptiveKLController,
    CeilingKLController,
    FixedKLController,
    make_kl_controller,
    resolve_kl_horizon,
)


def test_auto_horizon_is_a_tenth_of_the_runs_episodes():
    assert resolve_kl_horizon("auto", steps=40, rollout_batch_size=8) == 32
    assert resolve_kl_horizon("auto", steps=150, rollout_batch_size=64) == 960
    assert resolve_kl_horizon("auto", steps=1, rollout_batch_size=2) == 1  # never 0
    assert resolve_kl_horizon(10_000, steps=40, rollout_batch_size=8) == 10_000
    with pytest.raises(ValueError, match="rlhf.kl_horizon"):
        resolve_kl_horizon(0, steps=40, rollout_batch_size=8)


def test_auto_horizon_lets_zieglers_coefficient_move_within_a_short_run():
    # 20 steps x 8 episodes, KL twice the target throughout: error clipped to +0.2, x(1 + 0.2 * 8/16) a step
    auto = AdaptiveKLController(0.05, target=6.0, horizon=resolve_kl_horizon("auto", 20, 8))
    fixed = AdaptiveKLController(0.05, target=6.0, horizon=10_000)
    for _ in range(20):
        auto.update(12.0, 8)
        fixed.update(12.0, 8)
    assert math.isclose(auto.value, 0.05 * 1.1**20)  # x6.7 over the run
    assert fixed.value < 0.05 * 1.004  # the paper's horizon: the coefficient stays where it started


def test_ceiling_controller_holds_its_floor_below_the_setpoint():
    c = CeilingKLController(0.05, target=6.0)
    for kl in (0.0, 1.0, -0.5, 2.9):
        c.update(kl, 8)
        assert c.value == 0.05  # Ziegler would shrink it; kl_coef is the floor


def test_ceiling_controller_rises_proportionally_above_the_setpoint_and_doubles_over_the_ceiling():
    c = CeilingKLController(0.05, target=6.0)  # setpoint 3, gain 0.25 a step
    c.update(4.5, 8)  # error 4.5/3 - 1 = 0.5 -> x1.125
    assert math.isclose(c.value, 0.05 * 1.125)
    c.update(6.0, 8)  # at the ceiling: error 1 -> x1.25
    assert math.isclose(c.value, 0.05 * 1.125 * 1.25)
    c.update(6.5, 8)  # over the ceiling: x2
    assert math.isclose(c.value, 0.05 * 1.125 * 1.25 * 2)
    c.update(30.0, 8)  # the factor does not grow with the overshoot
    assert math.isclose(c.value, 0.05 * 1.125 * 1.25 * 4)
    high = c.value
    c.update(0.0, 8)  # well under: error clipped to -0.2 -> x0.95, falling 5x slower than it rose
    assert math.isclose(c.value, high * 0.95)
    for _ in range(200):
        c.update(0.0, 8)
    assert c.value == 0.05  # ... and back to the floor, not below


def test_controllers_round_trip_their_state():
    c = CeilingKLController(0.05, target=6.0)
    c.update(7.0, 8)
    restored = make_kl_controller(0.5, "ceiling", 1.0, 1)
    assert isinstance(restored, CeilingKLController)
    restored.load_state_dict(c.state_dict())
    assert (restored.value, restored.floor, restored.target) == (0.1, 0.05, 6.0)
    restored.update(0.0, 8)
    assert restored.value == pytest.approx(0.1 * 0.95)
    assert isinstance(make_kl_controller(0.1, True, 6.0, 10), AdaptiveKLController)
    assert not isinstance(make_kl_controller(0.1, True, 6.0, 10), CeilingKLController)
    assert isinstance(make_kl_controller(0.1, False, 6.0, 10), FixedKLController)
    with pytest.raises(ValueError, match="rlhf.adaptive_kl"):
        make_kl_controller(0.1, "fast", 6.0, 10)


def test_config_accepts_auto_and_ceiling_and_names_a_bad_key():
    config = load_config(None, ["rlhf.adaptive_kl=ceiling", "rlhf.kl_horizon=auto"])
    assert (config.rlhf.adaptive_kl, config.rlhf.kl_horizon) == ("ceiling", "auto")
    assert load_config(None, ["rlhf.adaptive_kl=true"]).rlhf.adaptive_kl is True
    for bad, key in (("rlhf.kl_horizon=0", "rlhf.kl_horizon"), ("rlhf.kl_horizon=soon", "rlhf.kl_horizon"),
                     ("rlhf.adaptive_kl=fast", "rlhf.adaptive_kl"), ("rlhf.target_kl=0", "rlhf.target_kl")):
        with pytest.raises(TrellisError, match=key.replace(".", r"\.")):
            load_config(None, [bad])
    with pytest.raises(TrellisError, match="kl_coef > 0"):
        load_config(None, ["rlhf.adaptive_kl=ceiling", "rlhf.kl_coef=0"])
    assert load_config(None, ["rlhf.kl_coef=0"]).rlhf.kl_coef == 0  # a fixed coefficient of 0 is fine


def test_ceiling_controller_in_a_run_and_across_a_resume(tmp_path, tiny_dirs, prompt_file, monkeypatch):
    # a ceiling the tiny policy passes after its first update: the coefficient doubles on those steps
    config = tiny_config(tiny_dirs, prompt_file, steps=4, save_every=2, adaptive_kl="ceiling", target_kl=1e-4,
                         kl_coef=0.1, kl_estimator="k3")
    from trellis.rlhf import stage

    stage.run(config, WorldConfig(), tmp_path / "a")
    run_killed_after_step(config, tmp_path / "b", monkeypatch, step=2)
    stage.run(config, WorldConfig(), tmp_path / "b")

    a = [json.loads(line) for line in (tmp_path / "a" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_coef"] for r in a] == [r["kl_coef"] for r in b]  # restored from the checkpoint at step 2
    assert a[0]["kl_coef"] == 0.1
    for before, after in zip(a[:-1], a[1:], strict=True):
        expected = 2 * before["kl_coef"] if before["kl_mean"] > 1e-4 else before["kl_coef"]
        assert after["kl_coef"] == pytest.approx(expected)
    assert a[-1]["kl_coef"] > 0.1
    summary = json.loads((tmp_path / "a" / "rlhf" / "summary.json").read_text())
    assert summary["kl_horizon"] is None  # the ceiling's gain is per update
    assert summary["kl_coef_max"] == max(r["kl_coef"] for r in a)
    assert summary["kl_steps_over_target"] == sum(r["kl_mean"] > 1e-4 for r in a)


def test_zieglers_controller_gets_the_auto_horizon_in_a_run(tmp_path, tiny_dirs, prompt_file):
    from trellis.rlhf import stage

    config = tiny_config(tiny_dirs, prompt_file, steps=2, adaptive_kl=True, kl_horizon="auto", target_kl=1e-4,
                         kl_coef=0.1, kl_estimator="k3")
    stage.run(config, WorldConfig(), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert summary["kl_horizon"] == 1  # round(2 steps x 4 episodes / 10)
    # step 1's KL is 0 (policy = reference): error clipped to -0.2, x(1 - 0.2 * 4 episodes / 1)
    assert records[1]["kl_coef"] == pytest.approx(0.1 * 0.2)
