"""Decode steps of a closed batch replayed from a CUDA graph.

On a GPU a small model's decode step is host work: the lean step (`lean_decode`) still launches every
kernel from Python, some ninety for a 4-layer Llama, while the arithmetic of each takes microseconds. A CUDA
graph records those launches once and replays them as one. That needs fixed shapes and addresses, which
the running batch does not have (rows join and leave, the cache grows a column a step and is trimmed), so
the graph serves only a batch that is closed: `Engine.generate` once every prompt has joined, the shape
PPO rollouts and offline evaluation have. Then the batch is frozen (`RunningBatch.freeze`): its keys and
values are copied into static buffers wide enough for every token still to come; each step writes its
column in place, reveals it in a static mask and advances the positions, all inside the graph; rows that
finish keep their slot (their tokens are dropped) so no shape changes until the batch is done.

Attention then runs over the buffers' full width with the unwritten columns masked, so logits match the
trimmed cache's to rounding, not bitwise (tested on CPU through the same code without capture). Graphs are
kept per (rows, width bucket) and reused by later batches of that shape: they read the model's parameters
in place, so a policy PPO updates in place needs no recapture; moved parameters (a new storage) do.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

# static buffers are as wide as the prompt width plus the tokens to come, rounded up to this many columns,
# so that batches of different prompt widths replay one graph
WIDTH_BUCKET = 64
# graphs kept per engine, and the most bytes their key/value buffers may hold together (the newest graph is
# always kept): evaluation over many prompt widths would otherwise keep a full-width cache per shape
MAX_GRAPHS = 4
MAX_GRAPH_BYTES = 2**30
# a batch with fewer decode steps left than this is not worth a capture
MIN_STEPS = 4


class StaticLayer:
    """A cache layer over fixed `[B, heads, width, head_dim]` buffers: `update` writes the fed token's
    keys/values at column `col` (a device tensor, so the write is part of the graph) and returns the whole
    buffers, whose columns the static mask hides until they are written."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, col: torch.Tensor) -> None:
        self.keys, self.values, self.col = keys, values, col

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        self.keys.index_copy_(2, self.col, key_states)
        self.values.index_copy_(2, self.col, value_states)
        return self.keys, self.values


class StaticCache:
    def __init__(self, layers: list[StaticLayer]) -> None:
        self.layers = layers


class DecodeGraph:
    """The static buffers of one (rows, width) shape and, with `capture`, the CUDA graph of one step over them.

    A step: reveal column `col` in the mask, run the lean step on `ids` at `pos` (writing keys/values at
    `col`), leave the float logits in `logits`, then advance `pos` and `col` by one.
    """

    def __init__(self, lean: Any, rows: int, width: int, capture: bool, pool: Any = None) -> None:
        model = lean.model
        config = model.config
        param = next(model.parameters())
        dev, dtype = param.device, param.dtype
        kv_heads = config.num_key_value_heads
        self.lean = lean
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((rows, 1), dtype=torch.long, device=dev)
        self.col = torch.zeros(1, dtype=torch.long, device=dev)
        self.mask = torch.zeros((rows, 1, 1, width), dtype=torch.bool, device=dev)
        shape = (rows, kv_heads, width, lean.head_dim)
        self.cache = StaticCache([
            StaticLayer(torch.zeros(shape, dtype=dtype, device=dev), torch.zeros(shape, dtype=dtype, device=dev),
                        self.col)
            for _ in range(config.num_hidden_layers)
        ])
        self.params = param_addresses(model)
        self.nbytes = sum(t.numel() * t.element_size() for layer in self.cache.layers for t in (layer.keys, layer.values))
        self.graph: Any = None
        self.logits: torch.Tensor | None = None
        if capture:
            self._capture(pool)

    def _step(self) -> torch.Tensor:
        self.mask.index_fill_(3, self.col, True)
        logits = self.lean(self.ids, self.mask, self.pos, self.cache)
        self.pos.add_(1)
        self.col.add_(1)
        return logits

    def _capture(self, pool: Any) -> None:
        # warm-up on a side stream (as torch's docs ask) writes junk into the buffers; `load` resets them
        self.mask[..., 0] = True
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.col.zero_()
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.col.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = self._step()

    def load(self, keys_values: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor,
             last: torch.Tensor, pos: torch.Tensor) -> None:
        """Start from a batch's state: per layer its `[B, heads, w, head_dim]` keys and values, its `[B, w]`
        mask, the token each row feeds next and that token's position."""
        w = mask.shape[1]
        for layer, (k, v) in zip(self.cache.layers, keys_values, strict=True):
            layer.keys[:, :, :w].copy_(k)
            layer.values[:, :, :w].copy_(v)
        self.mask.zero_()
        self.mask[:, 0, 0, :w].copy_(mask)
        self.col.fill_(w)
        self.ids.copy_(last[:, None])
        self.pos.copy_(pos[:, None])

    def step(self) -> torch.Tensor:
        """Logits `[B, vocab]` of the fed tokens (with a graph, its output buffer: read before the next step)."""
        if self.graph is None:
            return self._step()
        self.graph.replay()
        assert self.logits is not None
        return self.logits

    def feed(self, tokens: torch.Tensor) -> None:
        self.ids.copy_(tokens[:, None])


def param_addresses(model: Any) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.parameters())


class GraphDecoder:
    """An engine's decode graphs, by (rows, width bucket); `capture=False` runs the same static steps
    eagerly (how CPU tests check them, and what a device without graphs would run)."""

    def __init__(self, lean: Any, capture: bool, max_bytes: int = MAX_GRAPH_BYTES) -> None:
        self.lean, self.capture, self.max_bytes = lean, capture, max_bytes
        self.graphs: OrderedDict[tuple[int, int], DecodeGraph] = OrderedDict()
        self.pool: Any = torch.cuda.graph_pool_handle() if capture else None
        self.captures = 0

    def usable(self) -> bool:
        return not self.lean.hooked()

    def graph_for(self, rows: int, width: int) -> DecodeGraph:
        width = -(-width // WIDTH_BUCKET) * WIDTH_BUCKET
        key = (rows, width)
        graph = self.graphs.get(key)
        if graph is not None and graph.params != param_addresses(self.lean.model):
            del self.graphs[key]  # the model's parameters moved: the graph reads the old storage
            graph = None
        if graph is None:
            graph = DecodeGraph(self.lean, rows, width, self.capture, self.pool)
            self.captures += self.capture
            self.graphs[key] = graph
        self.graphs.move_to_end(key)
        while len(self.graphs) > 1 and (len(self.graphs) > MAX_GRAPHS
                                        or sum(g.nbytes for g in self.graphs.values()) > self.max_bytes):
            self.graphs.popitem(last=False)
        return graph
