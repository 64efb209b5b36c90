"""`offload_frozen`: the frozen reference and reward model in host memory except while they score.

This machine has no accelerator, so the moves are recorded rather than made: `_is_accelerator` is told the
training device is one, and `FrozenOffload._move` notes where the models would go.
"""

from __future__ import annotations

import pytest
import torch

from trellis.config import WorldConfig
from trellis.config.sft import SampleGenerations
from trellis.rlhf import offload, stage
from trellis.rlhf.offload import HOME, FrozenOffload
from trellis.rlhf.trainer import PPOTrainer


class Recorder:
    def __init__(self) -> None:
        self.moves: list[str] = []
        self.instances: list[FrozenOffload] = []


@pytest.fixture
def recorded(monkeypatch):
    rec = Recorder()
    init = FrozenOffload.__init__

    def remembering_init(self, *args, **kwargs):
        rec.instances.append(self)
        init(self, *args, **kwargs)

    monkeypatch.setattr(offload, "_is_accelerator", lambda device: True)
    monkeypatch.setattr(FrozenOffload, "__init__", remembering_init)
    monkeypatch.setattr(FrozenOffload, "_move", lambda self, device: rec.moves.append(str(device)))
    return rec


class FakeModel:
    def __init__(self) -> None:
        self.devices: list[str] = []

    def to(self, device):
        self.devices.append(str(device))
        return self


def test_models_go_home_and_visit_the_device_once_per_outer_use():
    ref, reward = FakeModel(), FakeModel()
    off = FrozenOffload([ref, None, reward], "cuda", enabled=True)
    assert ref.devices == reward.devices == ["cpu"] and off.home
    with off.on_device():
        assert not off.home
        with off.on_device():  # nested: no second move
            pass
        assert not off.home
    assert ref.devices == ["cpu", "cuda", "cpu"] and off.home
    # on a CPU, or when not asked for, nothing moves
    for device, enabled in (("cpu", True), ("cuda", False)):
        idle = FakeModel()
        quiet = FrozenOffload([idle], device, enabled=enabled)
        with quiet.on_device():
            pass
        assert idle.devices == [] and not quiet.home


def _trainer(make_config, tiny_dirs, prompt_texts, **overrides) -> PPOTrainer:
    from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer

    policy_dir, reward_dir = tiny_dirs
    config = make_config(**overrides)
    return PPOTrainer(config, load_causal_lm(policy_dir), load_causal_lm(policy_dir), None,
                      load_reward_model(reward_dir), load_tokenizer(policy_dir),
                      [{"prompt": p} for p in prompt_texts], torch.device("cpu"))


def test_the_update_runs_with_the_frozen_models_at_home(make_config, tiny_dirs, prompt_texts, recorded, monkeypatch):
    trainer = _trainer(make_config, tiny_dirs, prompt_texts, offload_frozen=True, value_model="policy_head",
                       value_warmup_rollouts=2)
    assert recorded.moves == [str(HOME)]
    seen: dict[str, list[bool]] = {"update": [], "reward": [], "reference": []}
    update = PPOTrainer.update

    def watched_update(self, *args, **kwargs):
        seen["update"].append(self.offload.home)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(PPOTrainer, "update", watched_update)
    # every forward of a model, whichever of its parts the caller runs, goes through its embeddings
    trainer.reward_model.get_input_embeddings().register_forward_pre_hook(
        lambda *_: seen["reward"].append(trainer.offload.home))
    trainer.ref_policy.get_input_embeddings().register_forward_pre_hook(
        lambda *_: seen["reference"].append(trainer.offload.home))
    trainer.train_step()
    trainer.train_step()
    # two warmup rollouts and two training rollouts: each brings the models over once and sends them back
    assert recorded.moves == [str(HOME)] + ["cpu", str(HOME)] * 4
    assert seen["update"] == [True, True]
    assert seen["reward"] and not any(seen["reward"]) and seen["reference"] and not any(seen["reference"])


def test_offloading_changes_no_number(make_config, tiny_dirs, prompt_texts, recorded):
    plain = _trainer(make_config, tiny_dirs, prompt_texts)
    moved = _trainer(make_config, tiny_dirs, prompt_texts, offload_frozen=True)
    a, b = plain.train_step(), moved.train_step()
    for key in ("reward_mean", "kl_mean", "policy_loss", "value_loss"):
        assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_the_stage_scores_samples_with_the_reward_model_on_the_device(tmp_path, make_config, recorded,
                                                                       monkeypatch):
    from trellis import checkpoint

    homes: list[bool] = []
    load = checkpoint.load_reward_model

    def watched_load(*args, **kwargs):
        model = load(*args, **kwargs)
        model.get_input_embeddings().register_forward_pre_hook(lambda *_: homes.append(recorded.instances[-1].home))
        return model

    monkeypatch.setattr(checkpoint, "load_reward_model", watched_load)
    # a value head, so that the only model this loader gives is the frozen reward model (a value model from
    # the reward checkpoint is trained, and stays on the device)
    config = make_config(steps=2, offload_frozen=True, value_model="policy_head",
                         samples=SampleGenerations(every=1, prompts=2, max_new_tokens=4))
    stage.run(config, WorldConfig(), tmp_path)
    assert homes and not any(homes)  # every reward-model forward (rollouts and samples) ran "on the device"
    assert recorded.instances[-1].home
