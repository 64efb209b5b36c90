"""KL coefficient controllers: fixed; the adaptive one of Ziegler et al. 2019 (target + horizon); and a
ceiling controller that holds the KL under `target` (kl_horizon does not apply to it).

Ziegler's horizon is in episodes, so a fixed horizon (10000 in the paper) leaves the coefficient where it
started on a short run (160 episodes move it by 0.3% at most). `kl_horizon: auto` scales it to the run:
a tenth of the run's episodes, so a KL off target for the whole run moves the coefficient by up to e^2.
"""

from __future__ import annotations

from typing import Any

# `kl_horizon: auto` = the run's episodes (steps x rollout_batch_size) / AUTO_HORIZON_DIVISOR
AUTO_HORIZON_DIVISOR = 10
# the ceiling controller steers the KL towards this fraction of the ceiling: the headroom above it absorbs
# the noise of a small batch's KL and the two steps a new coefficient takes to show in the measured KL
CEILING_SETPOINT = 0.5
# ... with this fraction of the error per PPO update (x1.25 at the ceiling). Per update, not per horizon:
# the KL climbs as fast on a long run as on a short one (80 steps with the auto horizon's half as large gain
# went over the ceiling on 2 of 27 steps; 80 steps at this gain on none, kl_max 5.97)
CEILING_GAIN = 0.25
# ... and multiplies the coefficient by this on every step whose KL is over the ceiling (the factor of the
# adaptive penalty of Schulman et al. 2017, section 4)
CEILING_OVERSHOOT_FACTOR = 2.0


def resolve_kl_horizon(horizon: int | str, steps: int, rollout_batch_size: int) -> int:
    """The horizon in episodes: `horizon` itself, or for "auto" a tenth of the run's episodes (at least 1)."""
    if horizon == "auto":
        return max(1, round(steps * rollout_batch_size / AUTO_HORIZON_DIVISOR))
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon <= 0:
        raise ValueError(f"rlhf.kl_horizon: expected a positive number of episodes or 'auto', got {horizon!r}")
    return horizon


class _ControllerState:
    """state_dict / load_state_dict over the attributes named in `_STATE` (name -> type); a key missing
    from an older checkpoint keeps the configured value, except `value`, which must be there."""

    _STATE: dict[str, type] = {"value": float}

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        for name, kind in self._STATE.items():
            setattr(self, name, kind(state.get(name, getattr(self, name))))


class FixedKLController(_ControllerState):
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps


class AdaptiveKLController(_ControllerState):
    """Steers the coefficient so the measured KL tracks `target`.

    e = clip(KL / target - 1, -0.2, 0.2); beta <- beta * (1 + e * n_steps / horizon), where n_steps is the
    number of episodes since the last update (Ziegler et al. 2019, section 2.2).
    """

    _STATE = {"value": float, "target": float, "horizon": int}

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


class CeilingKLController(_ControllerState):
    """Treats `target` as a ceiling the KL should stay under, not a value to reach.

    Ziegler's multiplicative update towards setpoint s = CEILING_SETPOINT x target, per PPO update rather
    than per horizon, with the error clipped asymmetrically: beta <- beta * (1 + CEILING_GAIN * e),
    e = clip(KL / s - 1, -0.2, 1), so the coefficient rises up to 5x faster than it falls (e = 1 at the
    ceiling); a step whose KL is over the ceiling multiplies it by CEILING_OVERSHOOT_FACTOR instead. The
    initial coefficient is a floor: below the setpoint the policy moves as freely as with a fixed kl_coef.
    """

    _STATE = {"value": float, "floor": float, "target": float}

    def __init__(self, init_kl_coef: float, target: float):
        if target <= 0 or init_kl_coef <= 0:
            raise ValueError("the KL ceiling needs target > 0 and kl_coef > 0")
        self.value = float(init_kl_coef)
        self.floor = float(init_kl_coef)
        self.target = float(target)

    def update(self, current_kl: float, n_steps: int) -> None:
        del n_steps  # the KL moves per update whatever the batch: the gain is per update too
        if current_kl > self.target:
            self.value *= CEILING_OVERSHOOT_FACTOR
            return
        error = min(max(current_kl / (CEILING_SETPOINT * self.target) - 1.0, -0.2), 1.0)
        self.value = max(self.floor, self.value * (1.0 + CEILING_GAIN * error))


KLController = FixedKLController | AdaptiveKLController | CeilingKLController


def make_kl_controller(kl_coef: float, adaptive: bool | str, target: float, horizon: int) -> KLController:
    """adaptive: False (fixed kl_coef), True (Ziegler et al.: steer towards target) or "ceiling"."""
    if adaptive == "ceiling":
        return CeilingKLController(kl_coef, target)
    if adaptive is True:
        return AdaptiveKLController(kl_coef, target, horizon)
    if adaptive is False:
        return FixedKLController(kl_coef)
    raise ValueError(f"rlhf.adaptive_kl: expected true, false or 'ceiling', got {adaptive!r}")
