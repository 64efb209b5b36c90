"""Pack tokenized documents into fixed windows for causal-LM training.

Documents are joined with the <|endoftext|> id (one after each document) and the stream is chopped into
windows of seq_len + 1 tokens that overlap by one token, so that every next-token pair in the stream is
a training target exactly once: inputs are window[:-1], labels window[1:].

The training sampler reshuffles the document order every epoch (a different packing each pass, from
the seed alone) and then walks the windows of that packing in a seeded random order. Its state is two
integers, so a resumed run continues on exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trellis.errors import TrellisError


def join_documents(docs: Sequence[Sequence[int]], sep_id: int, order: Sequence[int] | None = None) -> torch.Tensor:
    """One 1-D token stream: doc, sep, doc, sep, ... (in `order` when given)."""
    sep = torch.tensor([sep_id], dtype=torch.long)
    parts: list[torch.Tensor] = []
    for i in order if order is not None else range(len(docs)):
        parts.append(torch.as_tensor(docs[i], dtype=torch.long))
        parts.append(sep)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def chop(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Windows [n, seq_len + 1] with stride seq_len; the tail shorter than a window is dropped."""
    n = (stream.numel() - 1) // seq_len
    if n <= 0:
        return torch.zeros(0, seq_len + 1, dtype=torch.long)
    return stream[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


def validation_windows(docs: Sequence[Sequence[int]], sep_id: int, seq_len: int, max_windows: int) -> torch.Tensor:
    """A fixed set of at most `max_windows` windows, spread evenly over the validation stream.

    A validation corpus shorter than one window gives a single shorter window rather than none.
    """
    stream = join_documents(docs, sep_id)
    if stream.numel() < 2:
        raise TrellisError("validation corpus is empty: no documents to measure perplexity on")
    windows = chop(stream, seq_len)
    if windows.shape[0] == 0:
        return stream.unsqueeze(0)
    if windows.shape[0] > max_windows:
        picks = torch.linspace(0, windows.shape[0] - 1, max_windows).round().long()
        windows = windows[picks]
    return windows


class PackedSampler:
    """Deterministic batches [batch_size, seq_len + 1] drawn from packed training documents."""

    def __init__(self, docs: Sequence[Sequence[int]], sep_id: int, seq_len: int, batch_size: int, seed: int = 0):
        self.docs = [torch.as_tensor(d, dtype=torch.long) for d in docs]
        self.sep_id = sep_id
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        total = sum(d.numel() + 1 for d in self.docs)
        if total < seq_len + 1:
            raise TrellisError(f"training corpus has {total} tokens, fewer than one window of seq_len+1={seq_len + 1}")
        self.epoch = 0
        self.offset = 0  # windows of the current epoch already handed out
        self._epoch_cache: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def _epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows of an epoch and the order they are served in."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            g = self._generator(epoch)
            doc_order = torch.randperm(len(self.docs), generator=g).tolist()
            windows = chop(join_documents(self.docs, self.sep_id, doc_order), self.seq_len)
            order = torch.randperm(windows.shape[0], generator=g)
            self._epoch_cache = (epoch, windows, order)
        return self._epoch_cache[1], self._epoch_cache[2]

    def windows_per_epoch(self) -> int:
        return self._epoch(self.epoch)[0].shape[0]

    def next_batch(self) -> torch.Tensor:
        rows: list[torch.Tensor] = []
        while len(rows) < self.batch_size:
            windows, order = self._epoch(self.epoch)
            take = order[self.offset : self.offset + self.batch_size - len(rows)]
            rows.extend(windows[take])
            self.offset += take.numel()
            if self.offset >= order.numel():
                self.epoch, self.offset = self.epoch + 1, 0
        return torch.stack(rows)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "num_docs": len(self.docs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["num_docs"] != len(self.docs):
            raise TrellisError(
                f"data position was saved for seed {state['seed']} over {state['num_docs']} documents, "
                f"but this run has seed {self.seed} over {len(self.docs)}: the corpus or seed changed"
            )
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
