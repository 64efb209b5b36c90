"""Stop training on validation perplexity: a target reached, or no improvement for `patience` evals."""

from __future__ import annotations

import math
from typing import Any

from trellis.config.pretrain import EarlyStopSpec
from trellis.errors import TrellisError


class EarlyStop:
    def __init__(self, spec: EarlyStopSpec) -> None:
        if spec.patience is not None and spec.patience <= 0:
            raise TrellisError(f"pretrain.early_stop.patience: {spec.patience}, must be positive")
        if spec.target_ppl is not None and spec.target_ppl <= 1.0:
            raise TrellisError(f"pretrain.early_stop.target_ppl: {spec.target_ppl}, must be above 1")
        self.spec = spec
        self.best = math.inf
        self.bad_evals = 0

    @property
    def enabled(self) -> bool:
        return self.spec.target_ppl is not None or self.spec.patience is not None

    def update(self, val_ppl: float) -> str | None:
        """Record an evaluation; the reason to stop, or None to go on."""
        if not self.enabled:
            return None
        if self.spec.target_ppl is not None and val_ppl <= self.spec.target_ppl:
            return f"val_ppl {val_ppl:.4g} reached target_ppl {self.spec.target_ppl}"
        if val_ppl < self.best * (1.0 - self.spec.min_delta):
            self.best, self.bad_evals = val_ppl, 0
        else:
            self.bad_evals += 1
        if self.spec.patience is not None and self.bad_evals >= self.spec.patience:
            return f"val_ppl has not improved on {self.best:.4g} for {self.bad_evals} evaluations (patience)"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_evals = float(state["best"]), int(state["bad_evals"])
