"""Key/value cache surgery for the engine: per-request caches, and the running batch's left-padded slab.

A request's keys and values travel as a list over layers of `(key, value)` pairs, each `[1, heads, len,
head_dim]`. The running batch keeps all rows in one left-padded cache whose layers are `SlabLayer`s: views
into buffers with spare columns, so a decode step writes its column in place where transformers'
`DynamicLayer` would `torch.cat` (copy) the whole cache every step.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

RowKV = list[tuple[Any, Any]]

# columns a slab keeps free for decode steps; growing copies the live cache once per this many steps
SLAB_SPARE = 64


class SlabLayer(DynamicLayer):
    """A cache layer over preallocated `[B, heads, capacity, head_dim]` buffers; `keys` is the live view."""

    def adopt(self, kbuf: Any, vbuf: Any, start: int, end: int) -> None:
        self.kbuf, self.vbuf, self.start, self.end = kbuf, vbuf, start, end
        self.dtype, self.device = kbuf.dtype, kbuf.device
        self.is_initialized = True
        self._view()

    def _view(self) -> None:
        self.keys = self.kbuf[:, :, self.start : self.end]
        self.values = self.vbuf[:, :, self.start : self.end]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        n = key_states.shape[-2]
        if self.end + n > self.kbuf.shape[2]:
            self._grow(n)
        self.kbuf[:, :, self.end : self.end + n] = key_states
        self.vbuf[:, :, self.end : self.end + n] = value_states
        self.end += n
        self._view()
        return self.keys, self.values

    def _grow(self, n: int) -> None:
        live = self.end - self.start
        shape = (*self.kbuf.shape[:2], live + n + SLAB_SPARE, self.kbuf.shape[3])
        kbuf, vbuf = self.kbuf.new_zeros(shape), self.vbuf.new_zeros(shape)
        kbuf[:, :, :live] = self.keys
        vbuf[:, :, :live] = self.values
        self.adopt(kbuf, vbuf, 0, live)

    def batch_select_indices(self, indices: Any) -> None:
        self.kbuf, self.vbuf = self.kbuf[indices], self.vbuf[indices]
        self._view()

    def trim_left(self, n: int) -> None:
        self.start += n
        self._view()


def new_cache(model: Any) -> Any:
    try:
        return DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - configs that the layer-type dispatch does not know
        return DynamicCache()


def plain_layers(model: Any) -> bool:
    """True when the model's cache is plain full-attention layers, so rows can be cut out and stacked."""
    cache = new_cache(model)
    return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)


def cache_with_past(model: Any, past: RowKV | None) -> Any:
    """A batch-1 cache holding `past` (already concatenated keys/values per layer), or an empty one."""
    cache = new_cache(model)
    if past is None:
        return cache
    for layer_idx, (k, v) in enumerate(past):
        cache.update(k, v, layer_idx)
    return cache


def layer_kv(cache: Any) -> RowKV:
    return [(layer.keys, layer.values) for layer in cache.layers]


class PadMask:
    """The running batch's `[B, width]` bool attention mask: row b's first `pads[b]` columns are padding.

    Rows are only ever left-padded, so `pads` (kept on the host) says everything: trimming and the "no row
    is padded" check need no device round trip. The tensor is a view into a buffer whose spare columns are
    already True, so a decode step widens the view instead of building a new mask.
    """

    def __init__(self, pads: list[int], width: int, device: Any) -> None:
        self.pads, self.width, self.device = list(pads), width, device
        self.padded = max(self.pads, default=0) > 0
        self._fill()

    def _fill(self) -> None:
        import torch

        cols = torch.arange(self.width + SLAB_SPARE, device=self.device)
        self.buf = cols[None, :] >= torch.tensor(self.pads, dtype=torch.long, device=self.device)[:, None]
        self.start = 0

    @property
    def tensor(self) -> Any:
        return self.buf[:, self.start : self.start + self.width]

    def grow(self, n: int = 1) -> None:
        """`n` more columns of real tokens for every row (a decode step)."""
        self.width += n
        if self.start + self.width > self.buf.shape[1]:
            self._fill()

    def select(self, keep: list[int], index: Any) -> None:
        """Keep the rows `keep` (`index`: the same as a tensor on the mask's device)."""
        self.pads = [self.pads[i] for i in keep]
        self.padded = max(self.pads, default=0) > 0
        self.buf = self.buf[index]

    def trim(self) -> int:
        """Drop the leading columns that are padding for every row; returns how many."""
        lead = min(self.pads, default=0)
        if lead:
            self.pads = [p - lead for p in self.pads]
            self.padded = max(self.pads) > 0
            self.start += lead
            self.width -= lead
        return lead


def join_rows(cache: Any, mask: PadMask | None, rows: list[RowKV]) -> tuple[Any, PadMask]:
    """Stack per-request caches under the running batch's (None when empty), left-padding all to one width.

    Returns the new slab cache and its mask.
    """
    old_b = 0 if mask is None else len(mask.pads)
    old_w = 0 if mask is None else mask.width
    lengths = [kv[0][0].shape[2] for kv in rows]
    width = max([old_w, *lengths])
    n = old_b + len(rows)
    out = cache if cache is not None else DynamicCache()
    if cache is None:
        out.layers = [SlabLayer() for _ in rows[0]]
    for layer_idx, layer in enumerate(out.layers):
        k0, v0 = rows[0][layer_idx]
        shape = (n, k0.shape[1], width + SLAB_SPARE, k0.shape[3])
        kbuf, vbuf = k0.new_zeros(shape), v0.new_zeros(shape)
        if old_b:
            kbuf[:old_b, :, width - old_w : width] = layer.keys
            vbuf[:old_b, :, width - old_w : width] = layer.values
        for i, kv in enumerate(rows):
            k, v = kv[layer_idx]
            kbuf[old_b + i, :, width - lengths[i] : width] = k[0]
            vbuf[old_b + i, :, width - lengths[i] : width] = v[0]
        layer.adopt(kbuf, vbuf, 0, width)
    old_pads = [] if mask is None else [p + width - old_w for p in mask.pads]
    pads = old_pads + [width - length for length in lengths]
    return out, PadMask(pads, width, rows[0][0][0].device)


def trim_left(cache: Any, n: int) -> None:
    for layer in cache.layers:
        if isinstance(layer, SlabLayer):
            layer.trim_left(n)
        elif layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layer.keys = layer.keys[:, :, n:, :]
            layer.values = layer.values[:, :, n:, :]


def prefix_of(kv: RowKV, n: int) -> RowKV:
    """The first `n` positions of a request's cache (views: the caller must not write into them)."""
    return [(k[:, :, :n], v[:, :, :n]) for k, v in kv]


def nbytes(kv: RowKV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
