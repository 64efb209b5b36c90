"""`trellis sft`: supervised fine-tuning with the loss on responses only (TRL SFTTrainer).

`model` null in a pipeline means the pretrain stage's final checkpoint; `data` "world" means the
synthetic world's instructions.
"""

from trellis.config.base import HFTrainerSection, Section


class LoRASection(Section):
    """Low-rank adapters (peft LoRA); the stage merges them into the weights it exports."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # module names inside each layer (Llama: the attention and MLP projections)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SFTConfig(HFTrainerSection):
    # pack several short examples into one max_length row (off: one example a row)
    packing: bool = False
    epochs: float = 8.0
    lr: float = 2e-3
    eval_fraction: float = 0.05
    # train only the first N examples of the data (null: all); for short recipes on large files
    max_examples: int | None = None
    # null: full fine-tuning
    lora: LoRASection | None = None
