"""The likelihood term of a reward model: r(x, y) = head(h_last) + alpha * mean_t log p(y_t | x, y_<t).

Why: a small reward model initialised from the SFT model knows which answer is right but its last-token
score head does not learn to read that knowledge from a few hundred pairs. On the quickstart world the SFT
model's own likelihood ranks every held-out fact pair right (1.00), and so does the trained reward model's
backbone, while its score head gets 0.87 of them (docs/LOG.md, 2026-12-04). The term gives the head the
backbone's own per-token surprise: the mean log-probability of the answer's tokens under the backbone read
through its tied input embeddings (the causal LM the reward model was initialised from, adapted as the
reward model trains). `alpha` starts at `reward.likelihood_alpha` and trains at the stage's learning rate
with the rest of the model; at reward-model learning rates it barely moves in a short run (1.0 -> 1.004 on
the quickstart, 1.0 -> 0.9998 on SmolLM2), so in practice it is the weight of a prior the head adds to.

In the checkpoint: the config key `trellis_likelihood_term` = {"alpha": float, "response_header": [the
token ids that open the assistant turn]}; the answer is every token after the last occurrence of that
header. Plain transformers loads the checkpoint as a head-only reward model (and reports the unused
`likelihood_term.alpha` weight); `trellis.checkpoint.load_reward_model` attaches the term.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from trellis.errors import TrellisError

KEY = "trellis_likelihood_term"
# logit transforms under which the tied embeddings alone do not give the model's log-probabilities
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def response_header_ids(tokenizer: Any) -> list[int]:
    """The tokens the chat template puts between a user turn and the assistant's answer."""
    turn = [{"role": "user", "content": "x"}]
    plain = tokenizer.apply_chat_template(turn, tokenize=False)
    prompted = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    header = prompted[len(plain):] if prompted.startswith(plain) else ""
    if not header:
        raise TrellisError("reward.likelihood_term: the tokenizer's chat template has no assistant-turn header "
                           "(add_generation_prompt adds nothing), so the answer's tokens cannot be found")
    return list(tokenizer(header, add_special_tokens=False)["input_ids"])


def answer_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, header: list[int]) -> torch.Tensor:
    """[B, L] bool: the real tokens after the last occurrence of `header` in each row (none without one)."""
    length, width = input_ids.shape[1], len(header)
    if length < width:
        return torch.zeros_like(input_ids, dtype=torch.bool)
    windows = input_ids.unfold(1, width, 1)  # [B, L - width + 1, width]
    hits = (windows == input_ids.new_tensor(header)).all(-1)
    starts = torch.arange(hits.shape[1], device=input_ids.device)
    last = torch.where(hits, starts, starts.new_tensor(-1)).max(-1).values  # [B], -1: no header
    positions = torch.arange(length, device=input_ids.device)
    return (positions[None] >= (last + width)[:, None]) & (last >= 0)[:, None] & attention_mask.bool()


def mean_answer_logprob(hidden: torch.Tensor, input_ids: torch.Tensor, answer: torch.Tensor,
                        embedding: torch.Tensor) -> torch.Tensor:
    """Mean over each row's answer tokens of log softmax(h_{t-1} E^T)[x_t]: [B] (0 for a row without any).

    The vocabulary projection runs at the answer's positions only."""
    targets = answer[:, 1:]
    rows = targets.nonzero(as_tuple=True)[0]
    logits = hidden[:, :-1][targets].float() @ embedding.float().T
    token_logp = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:][targets][:, None]).squeeze(-1)
    sums = torch.zeros(input_ids.shape[0], device=hidden.device, dtype=token_logp.dtype).index_add(0, rows,
                                                                                                   token_logp)
    return sums / targets.sum(-1).clamp(min=1)


class LikelihoodTerm(nn.Module):
    def __init__(self, alpha: float, header: list[int]):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.header = list(header)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                embedding: torch.Tensor) -> torch.Tensor:
        answer = answer_mask(input_ids, attention_mask, self.header)
        return self.alpha * mean_answer_logprob(hidden, input_ids, answer, embedding)


def check_supported(model: Any, where: str) -> None:
    """The term reads the backbone through its input embeddings: they must be the output layer too."""
    config = model.config
    if not getattr(config, "tie_word_embeddings", False):
        raise TrellisError(f"{where}: the likelihood term needs tied input/output embeddings "
                           f"({type(model).__name__} has tie_word_embeddings false)")
    scaled = [k for k in _LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 1.0)]
    if scaled:
        raise TrellisError(f"{where}: the likelihood term does not support models with {scaled}")


def _forward_with_likelihood(self: Any, input_ids: torch.Tensor | None = None,
                             attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
    """The sequence-classification forward (score head at the last real token) plus the likelihood term."""
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    backbone = getattr(self, self.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (attention_mask.long() * positions).argmax(-1)  # the last real token, left or right padding
    scores = self.score(hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last])
    term = self.likelihood_term(hidden, input_ids, attention_mask, self.get_input_embeddings().weight)
    return SequenceClassifierOutputWithPast(logits=scores + term[:, None].to(scores.dtype))


def attach_likelihood_term(model: Any, header: list[int] | None = None, alpha: float = 1.0) -> Any:
    """Give a sequence-classification model the likelihood term (in place). With `header` None, the
    term the checkpoint's config names, if any (a model without one passes through)."""
    if header is None:
        spec = getattr(model.config, KEY, None)
        if not spec:
            return model
        header, alpha = spec["response_header"], spec["alpha"]
    check_supported(model, "reward.likelihood_term")
    device = next(model.parameters()).device
    model.likelihood_term = LikelihoodTerm(alpha, header).to(device)
    model.forward = types.MethodType(_forward_with_likelihood, model)
    write_spec(model)
    return model


def write_spec(model: Any) -> None:
    """The term's alpha, as trained, into the config that save_pretrained writes."""
    term = getattr(model, "likelihood_term", None)
    if term is not None:
        setattr(model.config, KEY, {"alpha": float(term.alpha.detach()), "response_header": list(term.header)})
