"""Parameter counts and training FLOPs of Llama-style decoders, from their shape alone.

Training FLOPs per token follow the PaLM appendix: 6 * N for the weight matmuls (forward 2N, backward
4N), plus 6 * L * T * d for attention scores and values (12 * L * T * d in PaLM, halved because a
causal mask leaves half of the score matrix, which kernels like flash-attention skip). N counts the
matmul weights, i.e. every parameter except the input embedding lookup; the output projection counts
even when it is tied to the embedding, since its matmul is done either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trellis.models.presets import ModelShape


@dataclass(frozen=True)
class ParamCount:
    embedding: int        # input embedding table
    lm_head: int          # output projection (0 when tied to the embedding)
    attention: int        # all layers
    mlp: int              # all layers
    norms: int            # all RMSNorm weights, final norm included

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.attention + self.mlp + self.norms

    @property
    def non_embedding(self) -> int:
        return self.attention + self.mlp + self.norms


def shape_from_hf_config(config: Any) -> tuple[ModelShape, int]:
    """A ModelShape and vocabulary size read from a transformers LlamaConfig-like object."""
    heads = config.num_attention_heads
    shape = ModelShape(
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        intermediate_size=config.intermediate_size,
        max_seq_len=config.max_position_embeddings,
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        vocab_size=config.vocab_size,
    )
    return shape, config.vocab_size


def count_params(shape: ModelShape, vocab_size: int | None = None) -> ParamCount:
    vocab = vocab_size or shape.vocab_size
    if vocab is None:
        raise ValueError("count_params needs a vocabulary size")
    d, hd = shape.hidden_size, shape.head_dim
    q_o = 2 * d * shape.num_heads * hd
    k_v = 2 * d * shape.num_kv_heads * hd
    mlp = 3 * d * shape.intermediate_size  # SwiGLU: gate, up, down
    return ParamCount(
        embedding=vocab * d,
        lm_head=0 if shape.tie_embeddings else vocab * d,
        attention=shape.num_layers * (q_o + k_v),
        mlp=shape.num_layers * mlp,
        norms=(2 * shape.num_layers + 1) * d,
    )


def matmul_params(shape: ModelShape, vocab_size: int | None = None) -> int:
    """Parameters that take part in a matmul for every token (the N of 6N)."""
    p = count_params(shape, vocab_size)
    head = p.embedding if shape.tie_embeddings else p.lm_head
    return p.attention + p.mlp + head


def attention_flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """Training FLOPs per token of QK^T and AV under a causal mask (forward + backward)."""
    return 6.0 * shape.num_layers * seq_len * shape.num_heads * shape.head_dim


def train_flops_per_token(shape: ModelShape, seq_len: int, vocab_size: int | None = None) -> float:
    return 6.0 * matmul_params(shape, vocab_size) + attention_flops_per_token(shape, seq_len)


def train_flops(shape: ModelShape, seq_len: int, tokens: int, vocab_size: int | None = None) -> float:
    return train_flops_per_token(shape, seq_len, vocab_size) * tokens


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak."""
    return tokens_per_s * flops_per_token / peak_flops


# Dense bf16/fp16 tensor-core peaks in TFLOP/s (no sparsity), as vendors state them; matched on the name
# torch.cuda.get_device_name() reports. Longer keys first, so "H100 PCIe" wins over "H100".
GPU_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,       # SXM
    "H200": 989.0,
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A10G": 125.0,
    "L40S": 362.0,
    "L4": 121.0,
    "V100": 125.0,
}


def peak_tflops_for(device_name: str, precision: str = "bf16") -> float | None:
    """The table's peak for a GPU name (bf16/fp16); fp32 runs use TF32 at half of it. None if unknown."""
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            peak = GPU_PEAK_TFLOPS[key]
            return peak / 2 if precision == "fp32" else peak
    return None
