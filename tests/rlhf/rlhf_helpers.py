"""Helpers shared by the RLHF tests (imported by name: every test folder has its own conftest)."""


def run_killed_after_step(config, run_root, monkeypatch, step: int) -> None:
    """Run the RLHF stage into run_root as if killed just after `step` (its checkpoint, if any, is written)."""
    import pytest

    from trellis.config import WorldConfig
    from trellis.rlhf import stage
    from trellis.rlhf.trainer import PPOTrainer

    original = PPOTrainer.train_step

    def killed(self):
        if self.step == step:
            raise KeyboardInterrupt("simulated kill")
        return original(self)

    with monkeypatch.context() as patch:
        patch.setattr(PPOTrainer, "train_step", killed)
        with pytest.raises(KeyboardInterrupt):
            stage.run(config, WorldConfig(), run_root)
