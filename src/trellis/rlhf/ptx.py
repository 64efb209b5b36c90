"""PPO-ptx (Ouyang et al. 2022): mix a causal-LM loss on pretraining text into every policy step, so that
RLHF pays less "alignment tax" on what the model knew before.

The text (the world's training corpus, or UTF-8 files split into paragraphs) is tokenized once, joined with
<|endoftext|> and cut into windows of ptx_seq_len + 1 tokens; each policy step takes the next
ptx_batch_size windows of a seeded order whose only state is a position, so a resumed run continues on
the same windows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from trellis.errors import TrellisError
from trellis.rlhf.prompts import PromptOrder


def ptx_documents(source: str | list[str], world_obj: Any | None) -> list[str]:
    if source == "world":
        if world_obj is None:
            raise TrellisError("rlhf.ptx_data: 'world' needs the synthetic world (trellis.data.world)")
        return list(world_obj.corpus("train"))
    from trellis.pretrain.corpus import read_text_files

    return read_text_files([source] if isinstance(source, str) else list(source), "rlhf.ptx_data")


def token_windows(docs: list[str], tokenizer: Any, seq_len: int) -> torch.Tensor:
    """[n, seq_len + 1] windows of the documents' token stream (documents joined by the separator)."""
    from trellis.data.chat_template import END_OF_TEXT
    from trellis.data.packing import chop, join_documents

    sep = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if sep is None or sep == tokenizer.unk_token_id:
        sep = tokenizer.eos_token_id
    ids = [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in docs]
    return chop(join_documents(ids, sep), seq_len)


class PtxStream:
    """Batches of pretraining windows and the weighted causal-LM loss on them."""

    def __init__(self, windows: torch.Tensor, batch_size: int, seed: int, device: Any):
        if windows.shape[0] == 0:
            raise TrellisError("rlhf.ptx_data: the text is shorter than one window of rlhf.ptx_seq_len tokens")
        self.windows, self.batch_size, self.device = windows, batch_size, device
        self.order = PromptOrder(windows.shape[0], seed)

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, world_obj: Any | None, device: Any) -> PtxStream:
        docs = ptx_documents(config.ptx_data, world_obj)
        windows = token_windows(docs, tokenizer, config.ptx_seq_len)
        return cls(windows, config.ptx_batch_size, config.seed, device)

    def next_batch(self) -> torch.Tensor:
        return self.windows[self.order.take(self.batch_size)].to(self.device)

    def backward(self, policy: Any, coef: float) -> float:
        """Accumulate coef x the next batch's mean next-token loss into the policy's gradients."""
        loss = causal_lm_loss(policy, self.next_batch())
        (coef * loss).backward()
        return float(loss.detach())

    def state_dict(self) -> dict[str, int]:
        return {"position": self.order.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.order.position = int(state["position"])


def causal_lm_loss(model: Any, windows: torch.Tensor) -> torch.Tensor:
    inputs, targets = windows[:, :-1], windows[:, 1:]
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
