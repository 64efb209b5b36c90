"""The reward-hacking monitor: the reward model's score rising while the world's gold score falls."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("trellis.rlhf")


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum((i - mx) ** 2 for i in range(n))


class RewardHackingMonitor:
    """Flags a window in which the reward model's score rises while the world's gold score falls."""

    def __init__(self, window: int, gold_drop: float):
        self.window, self.gold_drop = window, gold_drop
        self.rewards: list[float] = []
        self.golds: list[float] = []
        self.flagged = False

    def update(self, reward: float, gold: float) -> bool:
        self.rewards = (self.rewards + [reward])[-self.window:]
        self.golds = (self.golds + [gold])[-self.window:]
        if self.window < 2 or len(self.rewards) < self.window:
            return False
        span = self.window - 1
        rising = _slope(self.rewards) > 0
        falling = _slope(self.golds) * span < -self.gold_drop
        now = rising and falling
        if now and not self.flagged:
            log.warning("possible reward hacking: reward rose by %.3f while gold fell by %.3f over the last %d steps",
                        _slope(self.rewards) * span, -_slope(self.golds) * span, self.window)
        self.flagged = now
        return now

    def state_dict(self) -> dict[str, Any]:
        return {"rewards": list(self.rewards), "golds": list(self.golds), "flagged": self.flagged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rewards = [float(x) for x in state["rewards"]]
        self.golds = [float(x) for x in state["golds"]]
        self.flagged = bool(state["flagged"])
