"""Typed configs for every stage, loaded from YAML with `--set a.b=c` overrides.

A file is either a whole pipeline (sections pretrain, sft, reward, rlhf, eval, serve, world) or one
stage's fields at the top level; both load into a PipelineConfig. Errors name the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trellis.config.eval import EvalConfig
from trellis.config.pipeline import STAGE_ORDER, PipelineConfig
from trellis.config.pretrain import PretrainConfig
from trellis.config.reward import RewardConfig
from trellis.config.rlhf import RLHFConfig
from trellis.config.serve import ServeConfig
from trellis.config.sft import SFTConfig
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError

__all__ = [
    "EvalConfig",
    "PipelineConfig",
    "PretrainConfig",
    "RLHFConfig",
    "RewardConfig",
    "STAGE_ORDER",
    "SFTConfig",
    "ServeConfig",
    "WorldConfig",
    "apply_overrides",
    "dump_yaml",
    "load_config",
]

_SECTIONS = set(PipelineConfig.model_fields)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise TrellisError(f"{path}: config file not found")
    if path.is_dir():
        raise TrellisError(f"{path}: is a directory, expected a YAML config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TrellisError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrellisError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str], stage: str | None = None) -> dict[str, Any]:
    """Apply `a.b=c` overrides; with a stage, a key that is no pipeline section is read as `stage.key`."""
    for item in overrides:
        if "=" not in item:
            raise TrellisError(f"--set {item!r}: expected KEY=VALUE, such as sft.lr=1e-4")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise TrellisError(f"--set {item!r}: empty key")
        if stage and parts[0] not in _SECTIONS:
            parts = [stage, *parts]
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise TrellisError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_value(value)
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        else:
            msg = err["msg"]
            if "input" in err and err["type"] not in ("missing",):
                msg += f" (got {err['input']!r})"
        lines.append(f"{source}: {key}: {msg}")
    return "; ".join(lines)


def load_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    stage: str | None = None,
) -> PipelineConfig:
    """Load a pipeline YAML, or one stage's YAML (fields at the top level) when `stage` is given."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        data = _read_yaml(path)
        if stage is not None and stage in PipelineConfig.model_fields and not (set(data) & _SECTIONS - {"name"}):
            data = {stage: data}
        elif stage is not None and stage in PipelineConfig.model_fields:
            # a stage file may carry shared sections (world, name, runs_root) beside its own fields
            own = {k: v for k, v in data.items() if k not in _SECTIONS}
            if own:
                data = {k: v for k, v in data.items() if k in _SECTIONS}
                data.setdefault(stage, {}).update(own)
    if overrides:
        data = apply_overrides(data, overrides, stage)
        if source == "defaults":
            source = "--set"
        else:
            source += " (with --set)"
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise TrellisError(_format_validation_error(exc, source)) from None


def dump_yaml(model: Any, path: Path) -> None:
    """Write a resolved config (a pydantic model) as YAML."""
    path.write_text(yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False))
