"""Pick the torch device a stage runs on."""

from __future__ import annotations


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(name)
