"""Load Hugging Face checkpoint directories with errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def check_checkpoint_dir(path: str | Path, need_tokenizer: bool = True) -> Path:
    """Fail with a one-line message unless `path` looks like a complete HF checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise TrellisError(f"{p}: checkpoint directory not found")
    if not p.is_dir():
        raise TrellisError(f"{p}: expected a checkpoint directory, got a file")
    config = p / "config.json"
    if not config.exists():
        raise TrellisError(f"{p}: not a checkpoint (no config.json)")
    try:
        json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise TrellisError(f"{config}: corrupt config.json ({exc.msg} at line {exc.lineno})") from None
    if not any((p / name).exists() for name in WEIGHT_FILES):
        raise TrellisError(f"{p}: checkpoint has no weights (expected model.safetensors)")
    if need_tokenizer and not (p / "tokenizer.json").exists() and not (p / "tokenizer_config.json").exists():
        raise TrellisError(f"{p}: checkpoint has no tokenizer (expected tokenizer.json)")
    return p


def _wrap_load_error(p: Path, exc: Exception) -> TrellisError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TrellisError(f"{p}: corrupt or unreadable checkpoint: {first}")


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    p = check_checkpoint_dir(path, need_tokenizer=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(p))
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one named line
        raise _wrap_load_error(p, exc) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_model(auto_class_name: str, path: str | Path, device: Any, dtype: Any):
    import torch
    import transformers

    p = check_checkpoint_dir(path, need_tokenizer=False)
    try:
        model = getattr(transformers, auto_class_name).from_pretrained(str(p), dtype=dtype or torch.float32)
    except Exception as exc:  # noqa: BLE001
        raise _wrap_load_error(p, exc) from None
    return model.to(device)


def load_causal_lm(path: str | Path, device: Any = "cpu", dtype: Any = None):
    return _load_model("AutoModelForCausalLM", path, device, dtype)


def load_reward_model(path: str | Path, device: Any = "cpu", dtype: Any = None):
    """A reward model whose forward gives one scalar per sequence (logits [B, 1]).

    Single-head checkpoints load as they are (with their likelihood term, trellis.reward.likelihood, when
    their config names one); a multi-head checkpoint (one score output per axis) gets a
    score layer that returns the combination its config names (trellis.reward.heads); a separate-models
    checkpoint (one model per axis) loads as a RewardEnsemble giving that combination (trellis.reward.ensemble).
    """
    from trellis.reward.ensemble import ensemble_spec, load_ensemble
    from trellis.reward.heads import attach_combined_head
    from trellis.reward.likelihood import attach_likelihood_term

    p = check_checkpoint_dir(path, need_tokenizer=False)
    spec = ensemble_spec(p)
    if spec is not None:
        return load_ensemble(p, spec, lambda member: _load_model("AutoModelForSequenceClassification", member,
                                                                 device, dtype))
    # the likelihood term's weight is "unexpected" to transformers: expected here
    with quiet_transformers(likelihood_term_in(p)):
        model = _load_model("AutoModelForSequenceClassification", p, device, dtype)
    return attach_likelihood_term(attach_combined_head(model))


def likelihood_term_in(path: Path) -> bool:
    from trellis.reward.likelihood import KEY

    return bool(json.loads((path / "config.json").read_text()).get(KEY))


def quiet_transformers(quiet: bool = True):
    """A context in which transformers logs errors only (its load reports of keys that are expected to be
    missing or unused are noise to a Trellis user); `quiet` False: no change."""
    import contextlib

    from transformers.utils import logging as hf_logging

    @contextlib.contextmanager
    def errors_only():
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)

    return errors_only() if quiet else contextlib.nullcontext()
