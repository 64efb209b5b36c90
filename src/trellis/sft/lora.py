"""LoRA for the Trainer-backed stages: the peft config from a LoRASection, and the merge on export so a
stage's final/ stays a plain Hugging Face checkpoint that needs no peft to load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def peft_lora_config(section: Any, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=list(section.target_modules), bias="none", task_type=task_type)


def check_target_modules(model: Any, section: Any, where: str) -> None:
    """Fail naming the key when no module of the model matches target_modules (peft's error is long)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in section.target_modules if m not in names]
    if missing:
        raise TrellisError(f"{where}.lora.target_modules: {missing} match no module of the model "
                           f"(linear layers here include {sorted(n for n in names if n.endswith('_proj'))})")


def trainable_parameters(model: Any) -> dict[str, int | float]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "fraction": trainable / total if total else 0.0}


def is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_adapter(model: Any, out: Path) -> None:
    """The adapter alone (a few MB), beside the merged checkpoint, for users who stack or swap adapters."""
    model.save_pretrained(out, safe_serialization=True)


def merged(model: Any) -> Any:
    """The base model with the adapters folded into its weights (W + B A * alpha / r)."""
    return model.merge_and_unload() if is_peft(model) else model


def export_trained(model: Any, run: Any) -> tuple[Any, dict[str, int | float] | None]:
    """(the model to write as final/, LoRA's trainable-parameter counts or None): a LoRA model's adapter
    is saved to run_dir/adapter/ and folded into the weights; a fully fine-tuned model passes through."""
    from trellis.run import save_atomic

    if not is_peft(model):
        return model, None
    info = trainable_parameters(model)
    save_atomic(run.dir / "adapter", lambda tmp: save_adapter(model, tmp))
    return merged(model), info
