"""LoRA on the RLHF policy: only the adapters train, and the reference is the same model with its
adapters disabled (the base weights are the initial policy), so no second copy of the policy is held.

Checkpoints keep the adapter alone (resume loads it onto the base policy); final/ gets the merged weights,
a plain Hugging Face checkpoint that needs no peft to load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def add_lora(policy: Any, section: Any) -> Any:
    """The policy wrapped with fresh LoRA adapters (B = 0: it starts equal to the reference)."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in policy.named_modules()}
    missing = [m for m in section.target_modules if m not in names]
    if missing:
        raise TrellisError(f"rlhf.lora.target_modules: {missing} match no module of the policy "
                           f"(its projections: {sorted(n for n in names if n.endswith('_proj'))})")
    config = LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                        target_modules=list(section.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(policy, config)


def load_lora_policy(base: Any, adapter_dir: Path) -> Any:
    """The base policy with the adapters saved in a checkpoint, trainable (for resume)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)


def merged_copy(policy: Any) -> Any:
    """A plain transformers model with the adapters folded into its weights; the trained policy is left
    as it was (merge_and_unload on a deep copy)."""
    import copy

    if not callable(getattr(policy, "merge_and_unload", None)):
        return policy
    return copy.deepcopy(policy).merge_and_unload()
