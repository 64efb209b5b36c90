"""Separate reward models, one per axis, read as one reward model (`reward.separate_models`).

On disk (the reward stage's final/): each member is a plain Hugging Face sequence-classification
checkpoint in a subdirectory named after its axis, so transformers alone loads one axis's model.
config.json names the members and their combination (the spec of trellis.reward.heads), and
model.safetensors.index.json maps every member weight, prefixed with its axis, to its member's file: the
directory is a checkpoint whose weights are the members'.

In memory, `RewardEnsemble` reads like the single-head models PPO and evaluation already score:
`forward().logits` is [B, 1], the combined reward; `backbone` runs every member's transformer and puts
their hidden states side by side, and `score` splits them again, applies each member's own score layer
and combines (with `per_axis` and `spec`, like CombinedScoreHead). Code that applies
`model.score` to `model.<base_model_prefix>(...).last_hidden_state` therefore needs no change.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trellis.reward.heads import combine_rewards

ENSEMBLE_KEY = "trellis_reward_ensemble"
ARCHITECTURE = "TrellisRewardEnsemble"
INDEX_FILE = "model.safetensors.index.json"


def _transformer(member: nn.Module) -> nn.Module:
    return getattr(member, member.base_model_prefix)


def _score_layer(member: nn.Module) -> nn.Module:
    return getattr(member, "score", None) or member.classifier


class EnsembleConfig:
    """The little of a transformers config callers touch; pad_token_id is every member's."""

    num_labels = 1

    def __init__(self, spec: dict[str, Any], members: nn.ModuleDict):
        self.spec = spec
        self._members = members

    @property
    def pad_token_id(self) -> int | None:
        return next(iter(self._members.values())).config.pad_token_id

    @pad_token_id.setter
    def pad_token_id(self, value: int | None) -> None:
        for member in self._members.values():
            member.config.pad_token_id = value


class EnsembleBackbone:
    """Every member's transformer on the same ids; their last hidden states concatenated on the last axis."""

    def __init__(self, members: nn.ModuleDict):
        self.members = members

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        from transformers.modeling_outputs import BaseModelOutput

        hidden = [_transformer(m)(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
                  for m in self.members.values()]
        return BaseModelOutput(last_hidden_state=torch.cat(hidden, dim=-1))


class EnsembleScore:
    """Each member's score layer on its slice of the concatenated hidden states, then the combination."""

    def __init__(self, members: nn.ModuleDict, spec: dict[str, Any]):
        self.members = members
        self.spec = spec

    def per_axis(self, hidden: torch.Tensor) -> torch.Tensor:
        layers = [_score_layer(m) for m in self.members.values()]
        parts = torch.split(hidden, [layer.in_features for layer in layers], dim=-1)
        return torch.cat([layer(part) for layer, part in zip(layers, parts, strict=True)], dim=-1)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return combine_rewards(self.per_axis(hidden), self.spec).unsqueeze(-1)


class RewardEnsemble(nn.Module):
    """One reward model per axis (members keyed by axis, in the spec's order) giving the combined reward."""

    base_model_prefix = "backbone"

    def __init__(self, members: dict[str, nn.Module], spec: dict[str, Any]):
        super().__init__()
        if list(members) != list(spec["heads"]):
            raise ValueError(f"ensemble members {list(members)} do not match the combination's axes {spec['heads']}")
        self.members = nn.ModuleDict(members)
        self.spec = spec
        self.config = EnsembleConfig(spec, self.members)

    @property
    def backbone(self) -> EnsembleBackbone:
        return EnsembleBackbone(self.members)

    @property
    def score(self) -> EnsembleScore:
        return EnsembleScore(self.members, self.spec)

    def per_axis_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, axes]: each member's own reward, read where it reads it (its last non-pad token)."""
        return torch.cat([m(input_ids=input_ids, attention_mask=attention_mask).logits
                          for m in self.members.values()], dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any):
        from transformers.modeling_outputs import SequenceClassifierOutput

        per_axis = self.per_axis_logits(input_ids, attention_mask)
        return SequenceClassifierOutput(logits=combine_rewards(per_axis, self.spec).unsqueeze(-1))

    def without_constraint(self) -> RewardEnsemble:
        """The same members combined by the weighted sum alone: a critic needs a reward that is
        differentiable everywhere, which the constraint's constant penalty is not (see rlhf.value_init)."""
        spec = {k: v for k, v in copy.deepcopy(self.spec).items() if k != "constraint"}
        self.spec = self.config.spec = spec
        return self

    def save_pretrained(self, directory: str | Path, **_: Any) -> None:
        """Members in subdirectories, plus the ensemble's config.json and weight index."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for axis, member in self.members.items():
            member.save_pretrained(out / axis, safe_serialization=True)
        write_ensemble_files(out, self.spec)


def member_weight_files(member_dir: Path) -> dict[str, str]:
    """{tensor name: file} of one member checkpoint (one safetensors file or a sharded index)."""
    index = member_dir / INDEX_FILE
    if index.exists():
        return dict(json.loads(index.read_text())["weight_map"])
    from safetensors import safe_open

    with safe_open(str(member_dir / "model.safetensors"), framework="pt") as fh:
        return {name: "model.safetensors" for name in fh.keys()}  # noqa: SIM118 - safe_open is no dict


def write_ensemble_files(directory: Path, spec: dict[str, Any]) -> None:
    """config.json (the members and their combination) and the weight index over the member files."""
    weight_map = {}
    for axis in spec["heads"]:
        for name, file in member_weight_files(directory / axis).items():
            weight_map[f"{axis}.{name}"] = f"{axis}/{file}"
    (directory / "config.json").write_text(json.dumps({"architectures": [ARCHITECTURE], ENSEMBLE_KEY: spec},
                                                      indent=2) + "\n")
    (directory / INDEX_FILE).write_text(json.dumps({"metadata": {"format": ARCHITECTURE},
                                                    "weight_map": weight_map}, indent=2) + "\n")


def ensemble_spec(directory: Path) -> dict[str, Any] | None:
    """The combination spec when `directory` holds a separate-models reward checkpoint, else None."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    spec = config.get(ENSEMBLE_KEY) if isinstance(config, dict) else None
    return spec if isinstance(spec, dict) else None


def load_ensemble(directory: Path, spec: dict[str, Any], load_member: Callable[[Path], nn.Module]
                  ) -> RewardEnsemble:
    """The ensemble from its directory; `load_member` loads one member's checkpoint directory."""
    from trellis.errors import TrellisError

    missing = [axis for axis in spec["heads"] if not (directory / axis / "config.json").exists()]
    if missing:
        raise TrellisError(f"{directory}: separate-models reward checkpoint lacks the member(s) {missing} "
                           f"(expected subdirectories {spec['heads']})")
    return RewardEnsemble({axis: load_member(directory / axis) for axis in spec["heads"]}, spec)
