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


def tiny_rlhf_config(tiny_dirs, prompt_file, **overrides):
    """RLHFConfig for the tiny models: 3 quick steps on the prompt file, no gold evaluation."""
    from trellis.config import RLHFConfig

    policy_dir, reward_dir = tiny_dirs
    fields = dict(policy=str(policy_dir), reward_model=str(reward_dir), prompts=str(prompt_file), steps=3,
                  rollout_batch_size=4, minibatch_size=2, ppo_epochs=2, max_new_tokens=8, lr=1e-3,
                  save_every=0, gold_eval=False, eval_initial=False, device="cpu", seed=1)
    fields.update(overrides)
    return RLHFConfig(**fields)
