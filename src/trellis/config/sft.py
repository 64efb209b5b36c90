"""`trellis sft`: supervised fine-tuning with the loss on responses only (TRL SFTTrainer).

`model` null in a pipeline means the pretrain stage's final checkpoint; `data` "world" means the
synthetic world's instructions.
"""

from typing import Literal

from pydantic import Field, field_validator

from trellis.config.base import HFTrainerSection, Section


class LoRASection(Section):
    """Low-rank adapters (peft LoRA); the stage merges them into the weights it exports."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # module names inside each layer (Llama: the attention and MLP projections)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SampleGenerations(Section):
    """Greedy answers to a few fixed held-out prompts while training: samples.jsonl, TensorBoard text, and
    the last ones in summary.json."""

    # generate every N optimizer steps, and once more at the end of training
    every: int = Field(100, ge=1)
    # how many held-out prompts (the world's evaluation prompts, or the first user turns of the eval
    # split), or the prompts themselves
    prompts: int | list[str] = 4
    max_new_tokens: int = Field(48, ge=1)

    @field_validator("prompts")
    @classmethod
    def _some_prompts(cls, value: int | list[str]) -> int | list[str]:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"expected at least 1 prompt, got {value}")
        if isinstance(value, list) and (not value or not all(p.strip() for p in value)):
            raise ValueError("expected a non-empty list of non-empty prompts")
        return value


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
    # null: no sample generations
    samples: SampleGenerations | None = SampleGenerations()
    # an example longer than max_length tokens: "truncate" keeps its first max_length tokens (the end of
    # the answer, and its closing <|im_end|>, are lost), "drop" leaves it out; either way it is counted
    over_length: Literal["drop", "truncate"] = "truncate"
