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


def response_logprobs(model: Any, batch: SequenceBatch, temperature: float,
                      with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the response tokens (logits / temperature, as they were sampled), and optionally
    the entropy of the policy at each response position. Both [B, R], zero on padding."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = _gather_positions(out.logits, batch.logit_index)
    if temperature and temperature != 1.0:
        logits = logits / temperature
    logp = ppo.logprobs_from_logits(logits, batch.response_tokens) * batch.response_mask
    entropy = ppo.entropy_from_logits(logits) * batch.response_mask if with_entropy else None
    return logp, entropy


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
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
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
                  device: Any, batch_size: int = 32) -> torch.Tensor:
    """The reward model's logit at the last real token of each chat-rendered (prompt, response)."""
    texts = render_conversations(tokenizer, prompts, responses)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = []
    for start in range(0, len(texts), batch_size):
        encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        ids, mask = right_pad(encoded, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        per_position = hidden_scores(reward_model, ids, mask)
        last = (mask.sum(-1) - 1).clamp(min=0)
        scores.append(per_position[torch.arange(len(encoded), device=device), last])
    return torch.cat(scores).cpu()


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


@torch.no_grad()
def score_rollout(policy: Any, ref_policy: Any, value_model: Any, reward_model: Any, tokenizer: Any,
                  prompt_texts: list[str], prompt_ids: list[list[int]], response_ids: list[list[int]],
                  ended_with_eos: list[bool], temperature: float, device: Any,
                  forward_batch_size: int = 64) -> Rollout:
    """Old log-probs (policy and reference), values, entropy and reward scores of sampled episodes."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sequences = build_sequences(prompt_ids, response_ids, pad_id)
    logps, refs, values, entropies = [], [], [], []
    n = len(prompt_ids)
    for start in range(0, n, forward_batch_size):
        chunk = sequences.select(torch.arange(start, min(start + forward_batch_size, n))).to(device)
        rlen = sequences.response_tokens.shape[1]
        pad = (0, rlen - chunk.response_tokens.shape[1])
        logp, ent = response_logprobs(policy, chunk, temperature, with_entropy=True)
        ref, _ = response_logprobs(ref_policy, chunk, temperature)
        logps.append(torch.nn.functional.pad(logp, pad))
        refs.append(torch.nn.functional.pad(ref, pad))
        entropies.append(torch.nn.functional.pad(ent, pad))
        values.append(torch.nn.functional.pad(token_values(value_model, chunk), pad))
    special = set(tokenizer.all_special_ids)
    responses = [tokenizer.decode([t for t in r if t not in special], skip_special_tokens=True).strip()
                 for r in response_ids]
    scores = reward_scores(reward_model, tokenizer, prompt_texts, responses, device)
    return Rollout(
        prompts=list(prompt_texts),
        responses=responses,
        sequences=sequences.to(device),
        logprobs=torch.cat(logps),
        ref_logprobs=torch.cat(refs),
        values=torch.cat(values),
        entropy=torch.cat(entropies),
        scores=scores.to(device),
        ended_with_eos=torch.tensor(ended_with_eos, dtype=torch.bool, device=device),
    )
