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
    # auto: eager on a CPU in bf16 (torch's CPU flash-attention backward is slow in bf16: the ~18M benchmark
    # model trains 1.13x faster with eager there, BENCHMARKS.md), sdpa everywhere else
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # rows of the embedding table (default: the tokenizer's size); a larger value pads the table, e.g. to a
    # multiple of 128 for tensor-core-friendly shapes, or to a preset's published vocabulary so that a
    # throughput run does the same work as the published model
    vocab_size: int | None = None


class TokenizerSpec(Section):
    # train a byte-level BPE on the corpus, or load an existing tokenizer directory
    vocab_size: int = 2048
    path: str | None = None


class PretrainData(Section):
    # "world": the synthetic world's corpus; "files": plain text files
    source: Literal["world", "files"] = "world"
    train_files: list[str] = []
    val_files: list[str] = []
    # more held-out sets, each measured apart (val_ppl.<name>), e.g. one per domain or language
    val_sets: dict[str, list[str]] = {}


class CurriculumSpec(Section):
    # sequence length rises linearly from `start` to seq_len over the first `fraction` of steps, snapped
    # down to a multiple of `multiple` that divides seq_len; each full window is cut into seq_len/length
    # shorter ones, so the tokens per step stay the same
    start: int
    fraction: float = 0.1
    multiple: int = 64


class AveragingSpec(Section):
    # the mean of the weights at every checkpoint step in the final `last_fraction` of training (and the
    # final weights), written to averaged/ and evaluated beside final/
    last_fraction: float | None = None
    # an exponential moving average of the weights, updated every step, written to ema/
    ema_decay: float | None = None


class EarlyStopSpec(Section):
    # stop when validation perplexity falls to `target_ppl`, or has not improved by `min_delta` (relative)
    # for `patience` evaluations in a row
    target_ppl: float | None = None
    patience: int | None = None
    min_delta: float = 0.0


class MonitorSpec(Section):
    # per optimizer group gradient norms (grad_norm.decay, grad_norm.no_decay) at every log step
    grad_norm_groups: bool = False
    # per-layer RMS and max |x| of block outputs through forward hooks, every N steps (0: off)
    activations_every: int = 0
    # model FLOPs/token, achieved TFLOP/s and MFU against `peak_tflops` (default: the GPU table, or a
    # matmul probe on CPU)
    mfu: bool = False
    peak_tflops: float | None = None
    # peak memory: CUDA max allocated, or the process's max RSS on CPU
    memory: bool = False
    # under torchrun: seconds in the gradient all-reduce per log window, and their share of step time
    communication: bool = False


class PretrainConfig(Section):
    model: ModelSpec = ModelSpec()
    tokenizer: TokenizerSpec = TokenizerSpec()
    data: PretrainData = PretrainData()
    # the defaults train the "tiny" preset on the default world in under a minute of compute on 2 idle
    # CPU cores (~18k tokens/s): 300 steps of 16 x 128 tokens are ~18 passes over its ~35k training
    # tokens, and take validation perplexity from ~1000 to ~2 (600 steps overfit: val ppl rises again)
    seq_len: int = 128
    # sequences per optimizer step, unless global_batch_size or global_batch_tokens is set
    batch_size: int = 16
    # the global batch in sequences or in tokens (one of them); it stays the same on any number of devices:
    # gradient accumulation = global / (micro_batch_size x devices)
    global_batch_size: int | None = None
    global_batch_tokens: int | None = None
    # sequences per device per forward/backward (default: the global batch split over the devices)
    micro_batch_size: int | None = None
    steps: int = 300
    lr: float = 6e-3
    # the floor of the decay: an absolute lr, or min_lr_ratio x lr (set one)
    min_lr: float = 6e-4
    min_lr_ratio: float | None = None
    lr_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    # warmup in steps, or as a fraction of training (set one)
    warmup_steps: int = 20
    warmup_fraction: float | None = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # fp16: autocast with dynamic loss scaling (steps with inf/nan gradients are skipped); weights stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    loss_scale_init: float = 2.0**16
    loss_scale_growth_interval: int = 2000
    seq_len_curriculum: CurriculumSpec | None = None
    averaging: AveragingSpec = AveragingSpec()
    early_stop: EarlyStopSpec = EarlyStopSpec()
    monitor: MonitorSpec = MonitorSpec()
    gradient_checkpointing: bool = False
    compile: bool = False
    # torch's fused AdamW kernel (CPU and CUDA): faster, same maths, not bitwise the same as the default
    fused_optimizer: bool = False
    device: str = "auto"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 50
    eval_batches: int = 8
    save_every: int = 100
    keep_last: int = 2
