"""Continuation log-likelihoods with every shared prefix computed once (a KV cache per prefix).

lm-eval asks for log P(continuation | context) of many requests whose inputs overlap: the choices of one
question share its context, and the questions of an MMLU subject (or all of TruthfulQA) share a few-shot
preamble. A request's model input is `inp` (context + continuation, left-truncated to the model length,
last token dropped, exactly as HFLM builds it); the last len(continuation) positions are scored. We cut it
into a tree of three levels and run each node once:

    cluster prefix   tokens that several documents start with (few-shot preamble), when long enough
    document         the rest of inp[:s], s = first scored position (the context minus its last token)
    leaf             inp[s:], the positions whose logits are scored (one per distinct continuation)

A document's row carries its first leaf (with a single distinct leaf, as MMLU's A/B/C/D whose input is
the context alone, that is all of it); only its other leaves continue from its cached state. Rows attend to their ancestors' cached keys/values;
rows of a batch are sorted by length, right-padded, and a mask hides the gaps when their cached parts
differ in length. Logits are projected onto the vocabulary only at scored positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trellis.errors import TrellisError

# a cluster prefix shorter than this is not worth a forward pass of its own
MIN_SHARED_PREFIX = 16
# cached keys/values held at once (documents are processed in waves under this budget)
KV_BUDGET_BYTES = 2 * 1024**3
# keys/values one forward pass may stack (rows x (longest cached part + new tokens)): a batch of rows with
# long few-shot prefixes is cut short rather than copying gigabytes per pass
BATCH_KV_BYTES = 1024**3

Segment = list[tuple[Any, Any]]  # per layer (keys, values), each [kv_heads, length, head_dim]


@dataclass
class Row:
    """One sequence of a forward pass: new tokens after the cached segments it attends to."""

    past: list[Segment]
    tokens: list[int]
    keep_kv: int = 0  # how many leading new tokens' keys/values to keep for rows that continue from this one
    # (request index, offset in tokens of its first scored position); scored up to the end of tokens
    scored: list[tuple[int, int]] = field(default_factory=list)
    kv: Segment | None = None

    @property
    def past_len(self) -> int:
        return sum(seg[0][0].shape[1] for seg in self.past)


@dataclass
class Document:
    key: tuple[int, ...]
    leaves: dict[tuple[int, ...], list[int]] = field(default_factory=dict)  # leaf tokens -> request indices


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cluster_documents(keys: list[tuple[int, ...]], min_shared: int = MIN_SHARED_PREFIX) -> list[tuple[int, list[int]]]:
    """(shared prefix length, document indices) clusters. Keys are sorted so that documents sharing a
    preamble are neighbours; a document joins the open cluster while the tokens saved do not shrink
    (n members sharing p tokens save (n-1)*p). Clusters with nothing shared come back with length 0."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    clusters: list[tuple[int, list[int]]] = []
    members: list[int] = []
    shared = 0
    for i in order:
        if members:
            q = _common_prefix(keys[members[0]], keys[i])
            if q >= min_shared and len(members) * q >= (len(members) - 1) * shared:
                members.append(i)
                shared = q
                continue
            clusters.append((shared if len(members) > 1 else 0, members))
        members, shared = [i], len(keys[i])
    if members:
        clusters.append((shared if len(members) > 1 else 0, members))
    return clusters


class PrefixScorer:
    """Scores (inp, continuation) token requests with `model` (any Hugging Face causal LM)."""

    def __init__(self, model: Any, batch_size: int = 16, min_shared: int = MIN_SHARED_PREFIX,
                 kv_budget_bytes: int | None = None) -> None:
        self.model = model
        self.batch_size = max(1, int(batch_size))
        self.min_shared = min_shared
        budget = KV_BUDGET_BYTES if kv_budget_bytes is None else kv_budget_bytes
        self.kv_budget_tokens = max(1, budget // _kv_bytes_per_token(model))
        self.batch_kv_tokens = max(1, BATCH_KV_BYTES // _kv_bytes_per_token(model))
        self._select_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def score(self, requests: list[tuple[list[int], list[int]]],
              progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy decode) per (inp, continuation);
        the continuation is the target of inp's last len(continuation) positions."""
        docs: dict[tuple[int, ...], Document] = {}
        self._targets = [cont for _, cont in requests]
        for i, (inp, cont) in enumerate(requests):
            s = len(inp) - len(cont)
            if not cont or s < 0:
                raise TrellisError(f"loglikelihood request {i}: continuation of {len(cont)} tokens does not fit "
                                   f"an input of {len(inp)} tokens")
            key = tuple(inp[:s])
            docs.setdefault(key, Document(key)).leaves.setdefault(tuple(inp[s:]), []).append(i)
        self._results: list[tuple[float, bool] | None] = [None] * len(requests)
        self._progress = progress
        documents = list(docs.values())
        for wave in self._waves(cluster_documents([d.key for d in documents], self.min_shared), documents):
            self._run_wave(wave, documents)
        return self._results  # type: ignore[return-value]

    # -- scheduling -----------------------------------------------------------------------------------
    def _waves(self, clusters: list[tuple[int, list[int]]], documents: list[Document]) -> list[list[tuple[int, list[int]]]]:
        """Groups of clusters whose cached keys/values fit the budget together."""
        waves: list[list[tuple[int, list[int]]]] = [[]]
        used = 0
        for shared, members in clusters:
            # a big cluster is split into pieces that each recompute its prefix once
            piece: list[int] = []
            piece_cost = shared
            for d in members:
                cost = len(documents[d].key) - shared if len(documents[d].leaves) > 1 else 0
                if piece and used + piece_cost + cost > self.kv_budget_tokens:
                    waves[-1].append((shared, piece))
                    waves.append([])
                    used, piece, piece_cost = 0, [], shared
                piece.append(d)
                piece_cost += cost
            waves[-1].append((shared, piece))
            used += piece_cost
        return [w for w in waves if w]

    def _run_wave(self, wave: list[tuple[int, list[int]]], documents: list[Document]) -> None:
        prefix_rows = {c: Row([], list(documents[m[0]].key[:shared]), keep_kv=shared)
                       for c, (shared, m) in enumerate(wave) if shared}
        self._forward(list(prefix_rows.values()))
        doc_rows: list[Row] = []
        leaf_rows: list[tuple[Row, list[tuple[int, ...]], Document]] = []
        for c, (shared, members) in enumerate(wave):
            past = [prefix_rows[c].kv] if c in prefix_rows else []
            for d in members:
                doc = documents[d]
                rest = list(doc.key[shared:])
                if len(doc.leaves) == 1:
                    (leaf, ids), = doc.leaves.items()
                    doc_rows.append(Row(past, rest + list(leaf), scored=[(i, len(rest)) for i in ids]))
                elif rest:
                    # the first choice rides along with its context's row, the others continue from its cache
                    (first, ids), *others = doc.leaves.items()
                    row = Row(past, rest + list(first), keep_kv=len(rest), scored=[(i, len(rest)) for i in ids])
                    doc_rows.append(row)
                    leaf_rows.append((row, [leaf for leaf, _ in others], doc))
                else:
                    leaf_rows.append((Row(past, []), list(doc.leaves), doc))
        self._forward(doc_rows)
        rows = []
        for doc_row, leaves, doc in leaf_rows:
            past = doc_row.past + ([doc_row.kv] if doc_row.kv else [])
            rows += [Row(past, list(leaf), scored=[(i, 0) for i in doc.leaves[leaf]]) for leaf in leaves]
        del doc_rows, leaf_rows, prefix_rows
        self._forward(rows)

    # -- the model ------------------------------------------------------------------------------------
    def _forward(self, rows: list[Row]) -> None:
        # new tokens dominate the cost (every layer's MLP), so batch by their count first; gaps in the
        # cached part cost attention only
        rows = sorted(rows, key=lambda r: (-len(r.tokens), -r.past_len))
        batch: list[Row] = []
        longest = 0
        for row in rows:
            span = max(longest, row.past_len + len(row.tokens))
            if batch and (len(batch) == self.batch_size or (len(batch) + 1) * span > self.batch_kv_tokens):
                self._forward_batch(batch)
                batch, span = [], row.past_len + len(row.tokens)
            batch.append(row)
            longest = span
        if batch:
            self._forward_batch(batch)

    def _forward_batch(self, rows: list[Row]) -> None:
        import torch
        import torch.nn.functional as F

        device = next(self.model.parameters()).device
        past_lens = [r.past_len for r in rows]
        past_max = max(past_lens)
        width = max(len(r.tokens) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for b, row in enumerate(rows):
            ids[b, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
        positions = torch.tensor(past_lens)[:, None] + torch.arange(width)[None, :]
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "position_ids": positions.to(device),
                                  "use_cache": any(r.keep_kv for r in rows)}
        if past_max:
            kwargs["past_key_values"] = _stack_past(rows, past_max, device)
            kwargs["use_cache"] = True
            if min(past_lens) != past_max:
                # a row whose cached part is shorter has a gap before its new tokens; padding after the new
                # tokens needs no mask, since the scored positions never look at it
                mask = torch.ones(len(rows), past_max + width, dtype=torch.long)
                for b, n in enumerate(past_lens):
                    mask[b, n:past_max] = 0
                kwargs["attention_mask"] = mask.to(device)
        scored_positions = sorted({off + k for r in rows for _, off in r.scored for k in range(len(r.tokens) - off)})
        if self._select_logits:
            kwargs["logits_to_keep"] = torch.tensor(scored_positions or [0], device=device)
            column = {p: j for j, p in enumerate(scored_positions)}
        else:
            column = {p: p for p in scored_positions}
        out = self.model(**kwargs)
        if any(r.keep_kv for r in rows):
            cache = out.past_key_values
            for b, row in enumerate(rows):
                if row.keep_kv:
                    n = row.keep_kv
                    row.kv = [(layer.keys[b, :, past_max:past_max + n].clone(),
                               layer.values[b, :, past_max:past_max + n].clone()) for layer in cache.layers]
        if not scored_positions:
            return
        logprobs = F.log_softmax(out.logits.float(), dim=-1)
        for b, row in enumerate(rows):
            for i, off in row.scored:
                cols = [column[p] for p in range(off, len(row.tokens))]
                picked = logprobs[b, cols]
                target = torch.tensor(self._targets[i], dtype=torch.long, device=picked.device)
                greedy = bool((picked.argmax(dim=-1) == target).all())
                self._results[i] = (float(picked.gather(1, target[:, None]).sum()), greedy)
                if self._progress is not None:
                    self._progress(1)


def _stack_past(rows: list[Row], past_max: int, device: Any) -> Any:
    """A DynamicCache of the rows' cached segments, each row left-aligned and zero-padded to past_max."""
    import torch
    from transformers import DynamicCache

    first = next(r.past[0] for r in rows if r.past)
    layers = []
    for layer, (k0, v0) in enumerate(first):
        keys = torch.zeros(len(rows), k0.shape[0], past_max, k0.shape[2], dtype=k0.dtype, device=device)
        values = torch.zeros(len(rows), v0.shape[0], past_max, v0.shape[2], dtype=v0.dtype, device=device)
        for b, row in enumerate(rows):
            at = 0
            for seg in row.past:
                k, v = seg[layer]
                keys[b, :, at:at + k.shape[1]] = k
                values[b, :, at:at + k.shape[1]] = v
                at += k.shape[1]
        layers.append((keys, values))
    return DynamicCache(ddp_cache_data=layers)


def _kv_bytes_per_token(model: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    layers = int(getattr(cfg, "num_hidden_layers", 32))
    heads = int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 32))
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // int(getattr(cfg, "num_attention_heads", 32)))
    dtype_bytes = next(model.parameters()).element_size()
    return max(1, layers * 2 * heads * head_dim * dtype_bytes)
