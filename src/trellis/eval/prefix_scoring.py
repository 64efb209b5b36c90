"""Continuation log-likelihoods with every shared prefix computed once.

lm-eval asks for log P(continuation | context) of many requests whose inputs overlap: the choices of one
question share its context, and the questions of an MMLU subject (or all of TruthfulQA) share a few-shot
preamble. A request's model input is `inp` (context + continuation, left-truncated to the model length,
last token dropped, exactly as HFLM builds it); the last len(continuation) positions are scored. We cut it
into a tree and run each node once:

    cluster prefix   tokens that several documents start with (few-shot preamble), when long enough: one
                     forward pass per cluster, its keys/values kept while the cluster's documents run
    document         the rest of inp[:s] (s = first scored position) plus what all its leaves share
    leaf             the rest of each distinct continuation's input (the positions scored)

A document and all its leaves are one row of a forward pass: the leaves are laid one after another after
the document's tokens, with position ids that restart where the document ends and an attention mask that
lets a leaf see the cluster prefix, the document and itself only (a tree mask). So a question's context
is computed once for all its choices without copying its keys/values, and a few-shot preamble once for
all the questions of its subject. Short documents share a row (packed up to the longest row's length, each
seeing only itself), so that padding stays small; rows of a batch share their cluster prefix, are sorted
by length and right-padded. Logits are projected onto the vocabulary only at scored positions.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trellis.errors import TrellisError

# a cluster prefix shorter than this is not worth a forward pass of its own
MIN_SHARED_PREFIX = 16
# cluster-prefix keys/values held at once: clusters are processed in waves under this budget (a wave of
# ~20 few-shot preambles already fills the prefix passes' batches, so a larger one only costs memory)
KV_BUDGET_BYTES = 512 * 1024**2
# keys/values one forward pass may stack (rows x (cluster prefix + new tokens)): rows under a long
# few-shot preamble run in smaller batches rather than copying gigabytes per pass
BATCH_KV_BYTES = 512 * 1024**2
# attention implementations that take an arbitrary 4D additive mask (the tree mask needs one)
TREE_MASK_ATTENTION = ("eager", "sdpa")

Segment = list[tuple[Any, Any]]  # per layer (keys, values), each [kv_heads, length, head_dim]


@dataclass
class Row:
    """One sequence of a forward pass: new tokens after the cached cluster prefix it attends to.

    `branch[t]` is 0 for the document's tokens and j >= 1 for the tokens of its j-th leaf; a token sees the
    prefix, the branch-0 tokens before it and the tokens of its own branch before it. `segment[t]` numbers
    the documents packed into one row (empty: a single document); a token sees only its own document."""

    past: Segment | None
    tokens: list[int]
    positions: list[int]  # offset of each token after the cached prefix
    branch: list[int]
    # (request index, the token indices whose logits predict its continuation, in order)
    scored: list[tuple[int, list[int]]] = field(default_factory=list)
    keep_kv: int = 0  # how many leading tokens' keys/values to keep (a cluster prefix)
    kv: Segment | None = None
    segment: list[int] = field(default_factory=list)

    @property
    def past_len(self) -> int:
        return 0 if self.past is None else int(self.past[0][0].shape[1])

    @property
    def needs_mask(self) -> bool:
        """More than plain causal attention: leaves in branches, or several documents."""
        return any(self.branch) or any(self.segment)


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


def prefix_row(tokens: list[int]) -> Row:
    """A cluster prefix: run once, its keys/values kept."""
    return Row(None, list(tokens), list(range(len(tokens))), [0] * len(tokens), keep_kv=len(tokens))


def document_rows(rest: list[int], leaves: dict[tuple[int, ...], list[int]], past: Segment | None,
                  tree: bool = True) -> list[Row]:
    """The rows of one document (its tokens after the cluster prefix, then its leaves): one tree row, or
    without a tree mask one plain row per leaf (the document's tokens recomputed for each)."""
    if not tree:
        return [Row(past, rest + list(leaf), list(range(len(rest) + len(leaf))), [0] * (len(rest) + len(leaf)),
                    scored=[(i, list(range(len(rest), len(rest) + len(leaf)))) for i in ids])
                for leaf, ids in leaves.items()]
    keys = list(leaves)
    # what every leaf starts with (all of it for a single leaf, as MMLU's A/B/C/D) is computed once
    common = min(_common_prefix(keys[0], k) for k in keys)
    trunk = rest + list(keys[0][:common])
    row = Row(past, list(trunk), list(range(len(trunk))), [0] * len(trunk))
    shared_scored = list(range(len(rest), len(trunk)))
    for j, leaf in enumerate(keys, start=1):
        tail = leaf[common:]
        start = len(row.tokens)
        row.tokens += tail
        row.positions += range(len(trunk), len(trunk) + len(tail))
        row.branch += [j] * len(tail)
        row.scored += [(i, shared_scored + list(range(start, start + len(tail)))) for i in leaves[leaf]]
    return [row]


def pack_rows(rows: list[Row], capacity: int) -> list[Row]:
    """Best-fit decreasing: rows (documents under the same cached prefix) merged into rows of at most
    `capacity` tokens; each keeps its own positions, branches and scored indices (shifted)."""
    bins: list[list[Row]] = []
    free: list[tuple[int, int]] = []  # (tokens left, bin), sorted
    for row in sorted(rows, key=lambda r: -len(r.tokens)):
        k = bisect.bisect_left(free, (len(row.tokens), -1))
        if k < len(free):
            left, b = free.pop(k)
        else:
            left, b = capacity, len(bins)
            bins.append([])
        bins[b].append(row)
        bisect.insort(free, (left - len(row.tokens), b))
    return [_merge(members) for members in bins]


def _merge(rows: list[Row]) -> Row:
    if len(rows) == 1:
        return rows[0]
    out = Row(rows[0].past, [], [], [])
    for document, row in enumerate(rows):
        start = len(out.tokens)
        out.tokens += row.tokens
        out.positions += row.positions
        out.branch += row.branch
        out.segment += [document] * len(row.tokens)
        out.scored += [(i, [start + t for t in indices]) for i, indices in row.scored]
    return out


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
        self.tree = getattr(model.config, "_attn_implementation", "eager") in TREE_MASK_ATTENTION
        self._decoder, self._head = _decoder_and_head(model)
        # new tokens run through the model (padding excluded) and positions projected onto the vocabulary,
        # for tests and benchmarks
        self.forward_tokens = 0
        self.projected_positions = 0
        self.packed_rows = 0  # rows holding more than one document

    def score(self, requests: list[tuple[list[int], list[int]]],
              progress: Callable[[int], None] | None = None,
              temperatures: Sequence[float] | None = None) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy decode) per (inp, continuation);
        the continuation is the target of inp's last len(continuation) positions.

        With `temperatures`, `self.tempered[i][j]` is also request i's sum of log softmax(logits /
        temperatures[j]) at its targets: the continuation's log-likelihood had the model sampled at that
        temperature (what token-level temperature scaling fits)."""
        docs: dict[tuple[int, ...], Document] = {}
        self._targets = [cont for _, cont in requests]
        self._temperatures = [float(t) for t in temperatures] if temperatures else []
        if any(t <= 0 for t in self._temperatures):
            raise TrellisError(f"scoring temperatures must be > 0, got {self._temperatures}")
        self.tempered: list[list[float] | None] = [None] * len(requests) if self._temperatures else []
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
        for wave in self._waves(cluster_documents([d.key for d in documents], self.min_shared)):
            self._run_wave(wave, documents)
        return self._results  # type: ignore[return-value]

    # -- scheduling -----------------------------------------------------------------------------------
    def _waves(self, clusters: list[tuple[int, list[int]]]) -> list[list[tuple[int, list[int]]]]:
        """Groups of clusters whose prefixes' keys/values fit the budget together (documents keep none)."""
        waves: list[list[tuple[int, list[int]]]] = [[]]
        used = 0
        for shared, members in clusters:
            if waves[-1] and used + shared > self.kv_budget_tokens:
                waves.append([])
                used = 0
            waves[-1].append((shared, members))
            used += shared
        return waves

    def _run_wave(self, wave: list[tuple[int, list[int]]], documents: list[Document]) -> None:
        prefixes = {c: prefix_row(list(documents[m[0]].key[:shared])) for c, (shared, m) in enumerate(wave) if shared}
        self._forward(list(prefixes.values()))
        unshared: list[Row] = []
        for c, (shared, members) in enumerate(wave):
            past = prefixes.pop(c).kv if c in prefixes else None
            rows = [row for d in members
                    for row in document_rows(list(documents[d].key[shared:]), documents[d].leaves, past, self.tree)]
            if past is None:
                unshared += rows  # documents without a cluster prefix batch together
            else:
                del past
                self._forward(rows)  # the prefix's keys/values are freed with these rows
        self._forward(unshared)

    def _forward(self, rows: list[Row]) -> None:
        for batch in self._batches(rows):
            self._forward_batch(batch)

    def _batches(self, rows: list[Row]) -> Iterable[list[Row]]:
        """Rows under the same cluster prefix, longest first, at most batch_size and batch_kv_tokens each
        (a batch never mixes prefixes, so no row has a gap between its cached part and its new tokens).
        With the tree mask, short documents are first packed into rows as long as the longest one."""
        groups: dict[int, list[Row]] = {}
        for row in rows:
            groups.setdefault(id(row.past), []).append(row)
        for group in groups.values():
            if self.tree and not any(r.keep_kv for r in group):
                group = pack_rows(group, max(len(r.tokens) for r in group))
                self.packed_rows += sum(1 for r in group if r.segment)
            group.sort(key=lambda r: -len(r.tokens))
            past_len = group[0].past_len
            batch: list[Row] = []
            for row in group:
                span = past_len + len(batch[0].tokens if batch else row.tokens)
                if batch and (len(batch) == self.batch_size or (len(batch) + 1) * span > self.batch_kv_tokens):
                    yield batch
                    batch = []
                batch.append(row)
            if batch:
                yield batch

    # -- the model ------------------------------------------------------------------------------------
    def _forward_batch(self, rows: list[Row]) -> None:
        import torch

        device = next(self.model.parameters()).device
        past_len = rows[0].past_len
        width = max(len(r.tokens) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        positions = torch.arange(width).repeat(len(rows), 1)
        for b, row in enumerate(rows):
            ids[b, :len(row.tokens)] = torch.tensor(row.tokens, dtype=torch.long)
            positions[b, :len(row.tokens)] = torch.tensor(row.positions, dtype=torch.long)
        self.forward_tokens += sum(len(r.tokens) for r in rows)
        keep = any(r.keep_kv for r in rows)
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "position_ids": (positions + past_len).to(device),
                                  "use_cache": keep or past_len > 0}
        if past_len:
            kwargs["past_key_values"] = _batched_past(rows[0].past, len(rows))
        if any(r.needs_mask for r in rows):
            kwargs["attention_mask"] = tree_mask(rows, width, past_len, next(self.model.parameters()).dtype, device)
        out = self._decoder(**kwargs)
        if keep:
            for b, row in enumerate(rows):
                if row.keep_kv:
                    n = row.keep_kv
                    row.kv = [(layer.keys[b, :, past_len:past_len + n].clone(),
                               layer.values[b, :, past_len:past_len + n].clone()) for layer in out.past_key_values.layers]
        hidden = out.last_hidden_state if self._head is not None else out.logits
        del out
        self._score(rows, hidden)

    def _score(self, rows: list[Row], hidden: Any) -> None:
        """Each request's log-prob sum and greedy flag, from the vocabulary projection of the distinct
        scored positions only."""
        import torch
        import torch.nn.functional as F

        slot: dict[tuple[int, int], int] = {}
        owners: list[int] = []  # per scored token: its request
        slots: list[int] = []  # per scored token: its row in the projected positions
        targets: list[int] = []
        for b, row in enumerate(rows):
            for i, indices in row.scored:
                for t, target in zip(indices, self._targets[i], strict=True):
                    slots.append(slot.setdefault((b, t), len(slot)))
                    targets.append(target)
                    owners.append(i)
        if not slot:
            return
        self.projected_positions += len(slot)
        where = torch.tensor(list(slot), device=hidden.device)
        picked = hidden[where[:, 0], where[:, 1]]
        logits = (self._head(picked) if self._head is not None else picked).float()
        logprobs = F.log_softmax(logits, dim=-1)
        slot_index = torch.tensor(slots, device=hidden.device)
        target = torch.tensor(targets, device=hidden.device)
        token_logprob = logprobs[slot_index, target]
        # greedy: the target's log-prob is the largest (amax is several times cheaper than argmax on CPU)
        token_greedy = token_logprob >= logprobs.amax(dim=-1)[slot_index]
        requests = sorted(set(owners))
        local = {i: k for k, i in enumerate(requests)}
        owner = torch.tensor([local[i] for i in owners], device=hidden.device)
        sums = torch.zeros(len(requests), dtype=torch.float64, device=hidden.device)
        sums.index_add_(0, owner, token_logprob.double())
        misses = torch.zeros(len(requests), dtype=torch.long, device=hidden.device)
        misses.index_add_(0, owner, (~token_greedy).long())
        tempered = self._tempered_sums(logits, slot_index, target, owner, len(requests))
        for k, (i, total, miss) in enumerate(zip(requests, sums.tolist(), misses.tolist(), strict=True)):
            self._results[i] = (float(total), miss == 0)
            if tempered is not None:
                self.tempered[i] = tempered[k]
            if self._progress is not None:
                self._progress(1)

    def _tempered_sums(self, logits: Any, slot_index: Any, target: Any, owner: Any, n: int) -> list[list[float]] | None:
        """Per request, per temperature: the sum of its targets' log softmax(logits / T) (logits in float32)."""
        import torch

        if not self._temperatures:
            return None
        top = logits.amax(dim=-1)
        # log softmax(z / T)[y] = (z_y - max z) / T - log sum exp((z - max z) / T): the shifted logits once,
        # then one multiply-exp-sum per temperature into a reused buffer (3x faster than logsumexp(z / T))
        shifted = logits - top[:, None]
        picked = shifted[slot_index, target]
        buffer = torch.empty_like(shifted)
        columns = []
        for t in self._temperatures:
            torch.mul(shifted, 1.0 / t, out=buffer)
            log_z = buffer.exp_().sum(dim=-1).log_()
            token = picked / t - log_z[slot_index]
            sums = torch.zeros(n, dtype=torch.float64, device=logits.device)
            sums.index_add_(0, owner, token.double())
            columns.append(sums)
        return torch.stack(columns, dim=1).tolist()


def tree_mask(rows: list[Row], width: int, past_len: int, dtype: Any, device: Any) -> Any:
    """[batch, 1, width, past_len + width] additive mask: every token sees the cached prefix and, of its
    own document, the earlier tokens of branch 0 and of its own branch (padding, document -1, sees only
    padding)."""
    import torch

    branch = torch.full((len(rows), width), -1, dtype=torch.long)
    document = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        branch[b, :len(row.branch)] = torch.tensor(row.branch, dtype=torch.long)
        document[b, :len(row.tokens)] = torch.tensor(row.segment or [0] * len(row.tokens), dtype=torch.long)
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]  # [query, key]
    same_document = document[:, None, :] == document[:, :, None]
    visible = causal[None] & same_document & ((branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None]))
    visible = torch.cat([torch.ones(len(rows), width, past_len, dtype=torch.bool), visible], dim=-1)
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[:, None].to(device)


def _batched_past(past: Segment, batch: int) -> Any:
    """A DynamicCache of one cluster prefix for `batch` rows (a broadcast view; the cache copies it once)."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k[None].expand(batch, -1, -1, -1), v[None].expand(batch, -1, -1, -1))
                                        for k, v in past])


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The model's decoder stack and its vocabulary projection when logits are exactly head(last hidden
    state) (checked on a two-token probe), so that only scored positions are projected; otherwise the
    whole model and None (full logits)."""
    import torch

    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or decoder is model or head is None:
        return model, None
    device = next(model.parameters()).device
    probe = torch.tensor([[1, 2]], device=device)
    with torch.inference_mode():
        want = model(input_ids=probe, use_cache=False).logits
        got = head(decoder(input_ids=probe, use_cache=False).last_hidden_state)
    if want.shape != got.shape or not torch.allclose(want.float(), got.float(), atol=1e-4, rtol=1e-4):
        return model, None
    return decoder, head


def _kv_bytes_per_token(model: Any) -> int:
    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    layers = int(getattr(cfg, "num_hidden_layers", 32))
    heads = int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 32))
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // int(getattr(cfg, "num_attention_heads", 32)))
    dtype_bytes = next(model.parameters()).element_size()
    return max(1, layers * 2 * heads * head_dim * dtype_bytes)
