"""Pretraining checkpoints: a Hugging Face directory plus `trainer_state.pt` for an exact resume.

trainer_state.pt holds only tensors, numbers, strings and containers of them, so it loads with
torch.load(weights_only=True): the optimizer and scheduler state dicts, the RNG states (as tensors),
the sampler's data position, the step and the running totals.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

TRAINER_STATE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_hf_dir(out: Path, model, tokenizer) -> None:
    """Weights (safetensors), config, generation_config and tokenizer: a directory any HF loader takes."""
    from transformers.utils import logging as hf_logging

    # HF's "Writing model shards" bar would interleave with the training progress bar
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def save_checkpoint(out: Path, model, tokenizer, trainer_state: dict[str, Any]) -> None:
    import torch

    write_hf_dir(out, model, tokenizer)
    torch.save(trainer_state, out / TRAINER_STATE)


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    import torch

    path = ckpt / TRAINER_STATE
    if not path.exists():
        raise TrellisError(f"{ckpt}: checkpoint has no {TRAINER_STATE}; delete it to restart from the one before")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a corrupt checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrellisError(f"{path}: corrupt trainer state: {first}") from None


def load_model_weights(model, ckpt: Path) -> None:
    """Load the checkpoint's safetensors into `model` in place (tied weights are stored once)."""
    from safetensors.torch import load_model

    path = ckpt / "model.safetensors"
    if not path.exists():
        raise TrellisError(f"{ckpt}: checkpoint has no model.safetensors")
    try:
        missing, unexpected = load_model(model, str(path), strict=False, device=str(next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrellisError(f"{path}: cannot load weights: {first}") from None
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = set(missing) - tied
    if missing or unexpected:
        names = sorted(missing)[:3] or sorted(unexpected)[:3]
        raise TrellisError(f"{path}: weights do not match the model ({'missing' if missing else 'unexpected'}: "
                           f"{', '.join(names)})")
