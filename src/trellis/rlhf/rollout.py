"""Rollouts: sample responses through the serving engine, then score them in batched forward passes.

Sequences are laid out right-padded, one row per episode: prompt tokens, response tokens, padding. The
log-prob of response token j of row b comes from the logits at position prompt_len[b] - 1 + j, and so
does the value of the state before that token (the critic sees the same prefix the actor acted on).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trellis.rlhf import ppo
from trellis.tensors import right_pad


@dataclass
class SequenceBatch:
    """Prompt + response token rows, right-padded, with the index of each response token."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_tokens: torch.Tensor  # [B, R] (pad where response_mask is 0)
    response_mask: torch.Tensor  # [B, R] float
    logit_index: torch.Tensor  # [B, R]: position whose logits predict response token j

    def select(self, rows: torch.Tensor) -> SequenceBatch:
        """The given rows, trimmed to their longest sequence and response."""
        attn = self.attention_mask[rows]
        rmask = self.response_mask[rows]
        length = int(attn.sum(-1).max())
        rlen = max(int(rmask.sum(-1).max()), 1)
        return SequenceBatch(
            input_ids=self.input_ids[rows, :length],
            attention_mask=attn[:, :length],
            response_tokens=self.response_tokens[rows, :rlen],
            response_mask=rmask[:, :rlen],
            logit_index=self.logit_index[rows, :rlen],
        )

    def to(self, device: Any) -> SequenceBatch:
        return SequenceBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.response_tokens,
                                                       self.response_mask, self.logit_index)))


def length_sorted_chunks(lengths: torch.Tensor, chunk_size: int) -> list[torch.Tensor]:
    """Row indices in chunks of at most `chunk_size`, longest rows first, so that each chunk (padded to
    its own longest row) carries little padding. The order is deterministic (a stable sort)."""
    order = torch.sort(lengths.cpu(), descending=True, stable=True).indices
    return list(torch.split(order, max(chunk_size, 1)))


def build_sequences(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> SequenceBatch:
    """Lay out prompt + response rows, right-padded, and the index of each response token's logits."""
    rows = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    batch, length = len(rows), max(len(r) for r in rows)
    rlen = max(max(len(r) for r in response_ids), 1)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    response_tokens = torch.full((batch, rlen), pad_id, dtype=torch.long)
    response_mask = torch.zeros((batch, rlen), dtype=torch.float32)
    logit_index = torch.zeros((batch, rlen), dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        n = len(p) + len(r)
        input_ids[b, :n] = torch.tensor(rows[b], dtype=torch.long)
        attention_mask[b, :n] = 1
        if r:
            response_tokens[b, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            response_mask[b, : len(r)] = 1.0
        # padded response slots point at the last real position so the gather stays in range
        logit_index[b] = torch.clamp(torch.arange(rlen) + len(p) - 1, max=n - 1)
    return SequenceBatch(input_ids, attention_mask, response_tokens, response_mask, logit_index)


def _gather_positions(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor [B, L, ...] -> [B, R, ...] taken at index [B, R]."""
    expand = index.reshape(*index.shape, *([1] * (tensor.dim() - 2))).expand(*index.shape, *tensor.shape[2:])
    return tensor.gather(1, expand)


def _unwrap_peft(model: Any) -> Any:
    """The transformers model inside a peft wrapper (its LoRA layers stay in place and active)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _plain_lm_head(model: Any) -> tuple[Any, Any] | None:
    """(backbone, lm_head) when logits are exactly lm_head(backbone hidden states); None otherwise
    (soft-capped or scaled logits, or an unknown layout), so the caller falls back to a full forward."""
    inner = _unwrap_peft(model)
    config = getattr(inner, "config", None)
    if config is None or any(getattr(config, k, None) not in (None, 1.0) for k in
                             ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    backbone = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if backbone is None or head is None or backbone is inner:
        return None
    return backbone, head


def right_padded_mask(model: Any, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The attention mask to give a causal model for right-padded rows: none, for sdpa and eager attention.

    Padding only ever follows a row's real tokens, which a causal mask already keeps them from seeing, so
    the real positions' outputs are the same without it (tested), and sdpa runs its causal kernel without
    building and reading a [B, 1, L, L] mask or copying keys and values per query head (PPO's update
    forward and backward: ~5% faster on the quickstart policy on a CPU). Flash-attention kernels keep the
    mask: they use it to skip the padding altogether.
    """
    if getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager"):
        return None
    return attention_mask


def response_hidden_and_logits(model: Any, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states [B, R, H] and logits [B, R, V] at the positions that predict the response tokens.

    The vocabulary projection runs on those positions only: on prompt positions it is wasted work
    (about a tenth of a small model's forward and backward at chat prompt lengths).
    """
    parts = _plain_lm_head(model)
    if parts is None:
        out = model(input_ids=batch.input_ids, attention_mask=right_padded_mask(model, batch.attention_mask),
                    use_cache=False, output_hidden_states=True)
        return (_gather_positions(out.hidden_states[-1], batch.logit_index),
                _gather_positions(out.logits, batch.logit_index))
    backbone, head = parts
    hidden = backbone(input_ids=batch.input_ids, attention_mask=right_padded_mask(model, batch.attention_mask),
                      use_cache=False).last_hidden_state
    hidden = _gather_positions(hidden, batch.logit_index)
    return hidden, head(hidden)


def head_values(value_head: Any, hidden: torch.Tensor, batch: SequenceBatch) -> torch.Tensor:
    """A value head's values at the response positions' hidden states: [B, R], zero on padding."""
    return value_head(hidden.to(value_head.weight.dtype)).squeeze(-1).float() * batch.response_mask


def policy_outputs(model: Any, batch: SequenceBatch, temperature: float, with_entropy: bool,
                   value_head: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """One backbone pass for the policy's log-probs (and entropy) and the values of a value head on the
    policy's own hidden states (the shared-backbone critic). All [B, R], zero on padding."""
    hidden, logits = response_hidden_and_logits(model, batch)
    logp, entropy = _logprobs_and_entropy(logits, batch, temperature, with_entropy)
    return logp, entropy, head_values(value_head, hidden, batch)


def _logprobs_and_entropy(logits: torch.Tensor, batch: SequenceBatch, temperature: float,
                          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if temperature and temperature != 1.0:
        logits = logits / temperature
    logp = ppo.logprobs_from_logits(logits, batch.response_tokens) * batch.response_mask
    entropy = ppo.entropy_from_logits(logits) * batch.response_mask if with_entropy else None
    return logp, entropy


def response_logprobs(model: Any, batch: SequenceBatch, temperature: float,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (logits / temperature, as they were sampled), and optionally
    the entropy of the policy at each response position. Both [B, R], zero on padding."""
    return _logprobs_and_entropy(response_hidden_and_logits(model, batch)[1], batch, temperature, with_entropy)


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if backbone is None or head is None:
        raise TypeError(f"{type(model).__name__}: expected a sequence-classification model with a "
                        "backbone and a `score` head")
    return backbone, head


def hidden_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The classification head applied at every position: [B, L]."""
    backbone, head = _backbone_and_head(model)
    hidden = backbone(input_ids=input_ids, attention_mask=right_padded_mask(model, attention_mask),
                      use_cache=False).last_hidden_state
    return head(hidden).squeeze(-1).float()


def token_values(value_model: Any, batch: SequenceBatch) -> torch.Tensor:
    """Per-token values V(prompt + response[:j]) for every response token j: [B, R], zero on padding."""
    per_position = hidden_scores(value_model, batch.input_ids, batch.attention_mask)
    return per_position.gather(1, batch.logit_index) * batch.response_mask


def render_conversations(tokenizer: Any, prompts: list[str], responses: list[str]) -> list[str]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                          tokenize=False)
            for p, r in zip(prompts, responses, strict=True)]


@torch.no_grad()
def reward_scores(reward_model: Any, tokenizer: Any, prompts: list[str], responses: list[str],
                  device: Any, batch_size: int = 32,
                  per_axis: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The reward model's logit at the last real token of each chat-rendered (prompt, response).

    A multi-objective reward model (its score head has `per_axis` and names its heads in `spec`) gives the
    combined score; pass a dict as `per_axis` to also receive each objective's score, by axis name.
    """
    texts = render_conversations(tokenizer, prompts, responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    backbone, head = _backbone_and_head(reward_model)
    axis_names = list(getattr(head, "spec", {}).get("heads", [])) if hasattr(head, "per_axis") else []
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    scores = torch.empty(len(texts))
    axes = torch.empty(len(texts), len(axis_names))
    # length-sorted batches, each padded to its own longest row (as the policy's scoring passes)
    for rows in length_sorted_chunks(torch.tensor([len(e) for e in encoded]), batch_size):
        ids, mask = right_pad([encoded[i] for i in rows.tolist()], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        if hasattr(reward_model, "likelihood_term"):
            # its score reads every answer token (trellis.reward.likelihood): the model's own forward
            scores[rows] = reward_model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu()
            continue
        hidden = backbone(input_ids=ids, attention_mask=right_padded_mask(reward_model, mask),
                          use_cache=False).last_hidden_state
        last = (mask.sum(-1) - 1).clamp(min=0)
        final_hidden = hidden[torch.arange(len(rows), device=device), last]
        scores[rows] = head(final_hidden).squeeze(-1).float().cpu()
        if axis_names:
            axes[rows] = head.per_axis(final_hidden).float().cpu()
    if per_axis is not None and axis_names:
        per_axis.update({name: axes[:, i] for i, name in enumerate(axis_names)})
    return scores


@dataclass
class Rollout:
    """One batch of episodes with everything PPO needs, on the training device."""

    prompts: list[str]
    responses: list[str]
    sequences: SequenceBatch
    logprobs: torch.Tensor  # old policy log-probs [B, R]
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor  # raw reward-model scores [B]
    ended_with_eos: torch.Tensor  # [B] bool
    generation_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.sequences.response_mask

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def sample_responses(engine: Any, prompt_ids: list[list[int]], temperature: float, top_p: float,
                     max_tokens: int, seed: int, stop_token_ids: list[int]) -> tuple[list[list[int]], list[bool]]:
    """Responses from the serving engine, row i drawn with seed `seed + i`; the eos token that ended a
    response stays in it (the policy must learn to emit it). Returns (token ids, ended with eos)."""
    from trellis.serving.sampling import SamplingParams

    # one seed per row: rows sharing a seed would draw the same uniforms and so correlated samples
    params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed + i,
                             stop_token_ids=list(stop_token_ids)) for i in range(len(prompt_ids))]
    outs = engine.generate(prompt_ids, params)
    eos = set(stop_token_ids)
    responses, ended = [], []
    for out in outs:
        ids = [int(t) for t in out.token_ids]
        stopped = out.finish_reason == "stop"
        if stopped and (not ids or ids[-1] not in eos):
            # an engine that strips the stop token: put one back so its log-prob is trained
            ids.append(stop_token_ids[0])
        responses.append(ids)
        ended.append(bool(ids) and ids[-1] in eos)
    return responses, ended


def reference_of(policy: Any, ref_policy: Any):
    """The frozen reference as a context: `ref_policy` itself, or, when it is None, the LoRA policy with
    its adapters disabled (the base weights are the initial policy)."""
    import contextlib

    if ref_policy is not None:
        return contextlib.nullcontext(ref_policy)
    disable = getattr(policy, "disable_adapter", None)
    if disable is None:
        raise ValueError("no reference policy, and the policy has no LoRA adapters to disable")

    @contextlib.contextmanager
    def adapters_off():
        with disable():
            yield policy

    return adapters_off()


@torch.no_grad()
def score_rollout(policy: Any, ref_policy: Any, value_model: Any, reward_model: Any, tokenizer: Any,
                  prompt_texts: list[str], prompt_ids: list[list[int]], response_ids: list[list[int]],
                  ended_with_eos: list[bool], temperature: float, device: Any,
                  forward_batch_size: int = 64, value_head: Any = None, policy_pass: bool = True) -> Rollout:
    """Old log-probs (policy and reference), values, entropy and reward scores of sampled episodes.

    With `value_head`, the values come from that head on the policy's hidden states (value_model unused),
    and those hidden states are kept as extra["value_features"] [B, R, H]. With `policy_pass` False the
    policy and value model are not run: log-probs, values and entropy are zeros for the caller to fill
    (PPO's fused first epoch computes them in its own forward pass).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequences = build_sequences(prompt_ids, response_ids, pad_id)
    logps, refs, values, entropies, features = [], [], [], [], []
    chunks = length_sorted_chunks(sequences.attention_mask.sum(-1), forward_batch_size)
    rlen = sequences.response_tokens.shape[1]
    for rows in chunks:
        chunk = sequences.select(rows).to(device)
        pad = (0, rlen - chunk.response_tokens.shape[1])
        if not policy_pass:
            logp = ent = value = torch.zeros_like(chunk.response_mask)
        else:
            hidden, logits = response_hidden_and_logits(policy, chunk)
            logp, ent = _logprobs_and_entropy(logits, chunk, temperature, True)
            if value_head is None:
                value = token_values(value_model, chunk)
            else:
                value = head_values(value_head, hidden, chunk)
                features.append(torch.nn.functional.pad(hidden.float(), (0, 0, *pad)))
        with reference_of(policy, ref_policy) as ref_model:
            ref, _ = response_logprobs(ref_model, chunk, temperature)
        logps.append(torch.nn.functional.pad(logp, pad))
        refs.append(torch.nn.functional.pad(ref, pad))
        entropies.append(torch.nn.functional.pad(ent, pad))
        values.append(torch.nn.functional.pad(value, pad))
    # back to episode order
    inverse = torch.argsort(torch.cat(chunks)).to(device)
    special = set(tokenizer.all_special_ids)
    responses = [tokenizer.decode([t for t in r if t not in special], skip_special_tokens=True).strip()
                 for r in response_ids]
    per_axis: dict[str, torch.Tensor] = {}
    scores = reward_scores(reward_model, tokenizer, prompt_texts, responses, device, batch_size=forward_batch_size,
                           per_axis=per_axis)
    extra: dict[str, Any] = {"reward_per_axis": per_axis}
    if features:
        extra["value_features"] = torch.cat(features)[inverse]
    return Rollout(
        prompts=list(prompt_texts),
        responses=responses,
        sequences=sequences.to(device),
        logprobs=torch.cat(logps)[inverse],
        ref_logprobs=torch.cat(refs)[inverse],
        values=torch.cat(values)[inverse],
        entropy=torch.cat(entropies)[inverse],
        scores=scores.to(device),
        ended_with_eos=torch.tensor(ended_with_eos, dtype=torch.bool, device=device),
        extra=extra,
    )
