"""Named Llama-style model shapes (GQA, SwiGLU, RoPE, RMSNorm) and their `transformers.LlamaConfig`.

"tiny" is the quickstart model (about 1.3M parameters with a 2048 vocabulary: trains in minutes on two
CPU cores); "micro" is for tests. The llama3.* shapes are the published ones, for the scale planner;
they are never instantiated here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from trellis.errors import TrellisError

if TYPE_CHECKING:
    from transformers import LlamaConfig

    from trellis.config.pretrain import ModelSpec


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_seq_len: int
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    # the vocabulary the published model uses; a trained tokenizer's size replaces it in build_model_config
    vocab_size: int | None = None
    # Llama 3.x long-context RoPE scaling, kept for the reference shapes
    rope_scaling: dict[str, Any] | None = None
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def check(self, where: str = "model") -> ModelShape:
        if self.hidden_size % self.num_heads:
            raise TrellisError(f"{where}.hidden_size: {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise TrellisError(f"{where}.num_kv_heads: {self.num_kv_heads} does not divide num_heads {self.num_heads}")
        if min(self.hidden_size, self.num_layers, self.num_heads, self.num_kv_heads, self.intermediate_size,
               self.max_seq_len) <= 0:
            raise TrellisError(f"{where}: every size must be positive")
        return self


def _llama3_scaling(factor: float) -> dict[str, Any]:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


PRESETS: dict[str, ModelShape] = {
    "micro": ModelShape(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176,
                        max_seq_len=256),
    "tiny": ModelShape(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=352,
                       max_seq_len=512),
    "llama3.2-1b": ModelShape(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8,
                              intermediate_size=8192, max_seq_len=131072, rope_theta=500000.0,
                              tie_embeddings=True, vocab_size=128256, rope_scaling=_llama3_scaling(32.0)),
    "llama3.1-8b": ModelShape(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                              intermediate_size=14336, max_seq_len=131072, rope_theta=500000.0,
                              tie_embeddings=False, vocab_size=128256, rope_scaling=_llama3_scaling(8.0)),
    "llama3.1-405b": ModelShape(hidden_size=16384, num_layers=126, num_heads=128, num_kv_heads=8,
                                intermediate_size=53248, max_seq_len=131072, rope_theta=500000.0,
                                tie_embeddings=False, vocab_size=128256, rope_scaling=_llama3_scaling(8.0)),
}


def get_preset(name: str) -> ModelShape:
    try:
        return PRESETS[name]
    except KeyError:
        raise TrellisError(f"model.preset: unknown preset {name!r} (known: {', '.join(PRESETS)})") from None


_OVERRIDES = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_seq_len",
              "rope_theta", "tie_embeddings")


def resolve_shape(spec: ModelSpec) -> ModelShape:
    """The preset named in `spec` with the spec's explicit fields laid over it."""
    shape = get_preset(spec.preset)
    changes = {k: getattr(spec, k) for k in _OVERRIDES if getattr(spec, k) is not None}
    return replace(shape, **changes).check()


def llama_config(shape: ModelShape, vocab_size: int | None = None, *, pad_token_id: int | None = None,
                 bos_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                 attn_implementation: str = "sdpa") -> LlamaConfig:
    from transformers import LlamaConfig

    vocab = vocab_size or shape.vocab_size
    if vocab is None:
        raise TrellisError("model: a vocabulary size is needed (the tokenizer's or the preset's)")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": shape.rope_theta}
    if shape.rope_scaling:
        rope = {**shape.rope_scaling, "rope_theta": shape.rope_theta}
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        hidden_act="silu",
        max_position_embeddings=shape.max_seq_len,
        rms_norm_eps=shape.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=shape.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=0.02,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


def training_attention(requested: str, device_type: str, precision: str) -> str:
    """The attention kernel to train with: `auto` is eager on a CPU in bf16, where torch's flash-attention
    backward runs slower than in fp32 (and slower than eager's bf16 matmuls), and sdpa everywhere else."""
    if requested != "auto":
        return requested
    return "eager" if device_type == "cpu" and precision == "bf16" else "sdpa"


def build_model_config(spec: ModelSpec, vocab_size: int, *, pad_token_id: int | None = None,
                       bos_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                       device_type: str = "cpu", precision: str = "fp32") -> LlamaConfig:
    """The LlamaConfig for a pretrain config's model section and a trained tokenizer."""
    return llama_config(resolve_shape(spec), vocab_size, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                        eos_token_id=eos_token_id,
                        attn_implementation=training_attention(spec.attn_implementation, device_type, precision))
