"""`trellis pretrain`: a Llama-style decoder trained from scratch."""

from typing import Literal

from trellis.config.base import Section


class ModelSpec(Section):
    # a named preset from trellis.models.presets; explicit fields below override it
    preset: str = "tiny"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    intermediate_size: int | None = None
    max_seq_len: int | None = None
    rope_theta: float | None = None
    tie_embeddings: bool | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"


class TokenizerSpec(Section):
    # train a byte-level BPE on the corpus, or load an existing tokenizer directory
    vocab_size: int = 2048
    path: str | None = None


class PretrainData(Section):
    # "world": the synthetic world's corpus; "files": plain text files
    source: Literal["world", "files"] = "world"
    train_files: list[str] = []
    val_files: list[str] = []


class PretrainConfig(Section):
    model: ModelSpec = ModelSpec()
    tokenizer: TokenizerSpec = TokenizerSpec()
    data: PretrainData = PretrainData()
    # the defaults train the "tiny" preset on the default world in under a minute of compute on 2 idle
    # CPU cores (~18k tokens/s): 300 steps of 16 x 128 tokens are ~18 passes over its ~35k training
    # tokens, and take validation perplexity from ~1000 to ~2 (600 steps overfit: val ppl rises again)
    seq_len: int = 128
    batch_size: int = 16
    steps: int = 300
    lr: float = 6e-3
    min_lr: float = 6e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    keep_last: int = 2
