"""Prefill without padding: pieces of several prompts packed into one sequence of one forward pass.

Left-padding a group of prompts to its longest computes (and attends over) padding; on a CPU, where
prefill is compute-bound, that is time thrown away. Instead each forward takes a list of `Segment`s
(a chunk of one prompt, with the keys/values of the tokens before it, if any), lays the chunks end to end
in a batch of one, and gives the model a 4D mask in which every chunk sees only its own past and itself,
causally. Each segment gets back the logits of its last token and its own cache.

Measured on SmolLM2-135M, fp32, 2 threads on the dev box (2026-11-23), over bench_serving's first 16
prompts (39-336 tokens, 1698 in all): 5.7 s left-padded as one group, 2.0 s one prompt per forward,
1.6-1.7 s packed 512 tokens a forward (1.8-2.1 s packed 256, 768 or 1024 tokens a forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trellis.serving.kv import RowKV, cache_with_past, layer_kv


@dataclass
class Segment:
    tokens: list[int]  # the prompt tokens this forward computes
    past: RowKV | None  # keys/values of the prompt tokens before them
    start: int  # position id of tokens[0] (= length of past)


def packed_mask(segments: list[Segment], dtype: Any, device: Any) -> Any:
    """`[1, 1, q, past + q]` additive mask: each query sees its own segment's past and earlier tokens."""
    import torch

    past_lens = [s.start for s in segments]
    lens = [len(s.tokens) for s in segments]
    q = sum(lens)
    seg_q = torch.repeat_interleave(torch.arange(len(segments)), torch.tensor(lens))
    seg_past = torch.repeat_interleave(torch.arange(len(segments)), torch.tensor(past_lens))
    causal = torch.ones(q, q, dtype=torch.bool).tril() & (seg_q[:, None] == seg_q[None, :])
    sees_past = seg_q[:, None] == seg_past[None, :]
    allowed = torch.cat([sees_past, causal], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None].to(device)


def forward_segments(
    model: Any, segments: list[Segment], device: Any, takes_logits_to_keep: bool
) -> tuple[Any, list[RowKV]]:
    """One forward over `segments` packed together; returns `[S, vocab]` last-token logits and S caches."""
    import torch

    if len(segments) == 1:  # a plain causal forward: needs no custom mask, so works for any model
        seg = segments[0]
        ids = torch.tensor([seg.tokens], dtype=torch.long, device=device)
        cache = cache_with_past(model, seg.past)
        kwargs: dict[str, Any] = {}
        if takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        pos = torch.arange(seg.start, seg.start + len(seg.tokens), device=device)[None]
        mask = torch.ones((1, seg.start + len(seg.tokens)), dtype=torch.long, device=device)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        return out.logits[:, -1, :].float(), [layer_kv(cache)]

    past_parts = [s.past for s in segments if s.past is not None]
    past: RowKV | None = None
    if past_parts:
        past = [
            (
                torch.cat([p[layer][0] for p in past_parts], dim=2),
                torch.cat([p[layer][1] for p in past_parts], dim=2),
            )
            for layer in range(len(past_parts[0]))
        ]
    cache = cache_with_past(model, past)
    ids = torch.tensor([[t for s in segments for t in s.tokens]], dtype=torch.long, device=device)
    pos = torch.tensor(
        [[s.start + j for s in segments for j in range(len(s.tokens))]], dtype=torch.long, device=device
    )
    ends, at = [], 0
    for s in segments:
        at += len(s.tokens)
        ends.append(at - 1)
    dtype = next(model.parameters()).dtype
    kwargs = {}
    if takes_logits_to_keep:
        kwargs["logits_to_keep"] = torch.tensor(ends, device=device)
    out = model(
        input_ids=ids,
        attention_mask=packed_mask(segments, dtype, device),
        position_ids=pos,
        past_key_values=cache,
        use_cache=True,
        **kwargs,
    )
    logits = out.logits[0] if takes_logits_to_keep else out.logits[0, ends]
    return logits.float(), _split(layer_kv(cache), segments)


def _split(packed: RowKV, segments: list[Segment]) -> list[RowKV]:
    """Cut each segment's own cache (its past columns, then its new columns) out of the packed one."""
    import torch

    total_past = sum(s.start for s in segments)
    out: list[RowKV] = []
    p_off, q_off = 0, total_past
    for s in segments:
        n = len(s.tokens)
        kv: RowKV = []
        for k, v in packed:
            new_k, new_v = k[:, :, q_off : q_off + n], v[:, :, q_off : q_off + n]
            if s.start:
                old_k, old_v = k[:, :, p_off : p_off + s.start], v[:, :, p_off : p_off + s.start]
                kv.append((torch.cat([old_k, new_k], dim=2), torch.cat([old_v, new_v], dim=2)))
            else:  # a copy, so the packed buffer is not kept alive by a row that waits for its next chunk
                kv.append((new_k.clone(), new_v.clone()))
        out.append(kv)
        p_off += s.start
        q_off += n
    return out


def packing_works(model: Any, device: Any, takes_logits_to_keep: bool, vocab_size: int) -> bool:
    """Whether this model honours a custom 4D mask (flash-attention kernels, say, ignore it).

    Packs two short prompts, one with a past, and compares with running them one at a time.
    """
    import torch

    a, b = [t % vocab_size for t in (11, 12, 13, 14)], [t % vocab_size for t in (21, 22, 23, 24, 25)]
    _, (kv_a_head,) = forward_segments(model, [Segment(a[:2], None, 0)], device, takes_logits_to_keep)
    alone_a, _ = forward_segments(model, [Segment(a[2:], kv_a_head, 2)], device, takes_logits_to_keep)
    alone_b, _ = forward_segments(model, [Segment(b, None, 0)], device, takes_logits_to_keep)
    packed, _ = forward_segments(
        model, [Segment(a[2:], kv_a_head, 2), Segment(b, None, 0)], device, takes_logits_to_keep
    )
    want = torch.cat([alone_a, alone_b])
    fp32 = next(model.parameters()).dtype == torch.float32
    tol = (1e-3 if fp32 else 3e-2) * float(want.abs().max()) + 1e-5
    return bool((packed - want).abs().max() <= tol)
