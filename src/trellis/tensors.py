"""Small tensor helpers shared by the stages."""

from __future__ import annotations

from collections.abc import Sequence


def right_pad(sequences: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) of token sequences padded on the right to the longest one."""
    import torch

    width = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask
