"""`trellis rlhf`: PPO of our own against a reward model, with a frozen reference."""

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trellis.config.base import Section
from trellis.config.sft import SampleGenerations


class RLHFLoRA(Section):
    """LoRA adapters on the policy; the reference is then the same model with its adapters disabled."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])


class RLHFConfig(Section):
    # checkpoint directories; null in a pipeline means the SFT / reward stage's final checkpoint
    policy: str | None = None
    reward_model: str | None = None
    # "world" (held-out RLHF prompts), a path to a json/jsonl file of {"prompt": ...}, a .jsonl(.gz) file of
    # comparison pairs (hh-rlhf transcripts: single-turn prompts), or "reward_heldout": the pairs the reward
    # stage held out, split as it split them (its config.yaml beside reward_model; trellis.rlhf.prompts)
    prompts: str = "world"
    steps: int = 40
    rollout_batch_size: int = 32
    minibatch_size: int = 8
    ppo_epochs: int = 2
    # rows per forward/backward inside a minibatch (gradient accumulation); rows are sorted by length so
    # each micro-batch is padded only to its own longest row (less padding, same gradient). auto: 8 on a
    # CPU, where less padding pays; the whole minibatch on a GPU, where small models are launch-bound (32
    # rows of the quickstart policy: update 0.31 -> 0.09 s per step on an H200, BENCHMARKS.md); set a
    # number when a minibatch's activations do not fit in GPU memory
    micro_batch_size: int | Literal["auto"] = Field(default="auto", union_mode="left_to_right")
    # when one minibatch is the whole rollout (minibatch_size >= rollout_batch_size), the first PPO epoch's
    # forward pass runs under the rollout's policy, so it also gives the old log-probs, values and entropy:
    # the separate scoring forward of the policy (and of a separate value model) is skipped, and the first
    # ratio is exactly 1. Cost: the activations of every micro-batch of the rollout are held at once
    # (the advantages need all values before the first backward)
    fuse_scoring_pass: bool = False
    # forward/backward precision of rollout scoring and the update (bf16: autocast over fp32 master
    # weights; on CPUs with AMX its matmuls run ~4x faster). Old and new log-probs share it.
    precision: Literal["fp32", "bf16"] = "fp32"
    max_new_tokens: int = 32
    # 0.7: rollouts closer to the greedy answers that evaluation scores, and less noise from a tiny
    # policy's tail (quickstart: gold 0.740 -> 0.748 at T=0.7, 0.740 -> 0.70 at T=1.0, kl_coef 0.05-0.2)
    temperature: float = 0.7
    top_p: float = 1.0
    lr: float = 1e-4
    value_lr: float | None = None
    kl_coef: float = 0.1
    kl_estimator: Literal["k1", "k3"] = "k1"
    # the KL coefficient (trellis.rlhf.kl), against the per-answer KL to the reference (nats summed over the
    # answer): false = kl_coef fixed; true = Ziegler et al. 2019: steered towards target_kl with horizon
    # kl_horizon (episodes); "ceiling" = target_kl is a limit: kl_coef is the floor, the coefficient rises
    # each update the KL is over half of target_kl (up to x1.25 at target_kl, 5x faster than it falls) and
    # doubles on any step over target_kl (kl_horizon does not apply)
    adaptive_kl: bool | Literal["ceiling"] = False
    target_kl: float = Field(default=6.0, gt=0)
    # adaptive_kl true: episodes over which a KL off target changes the coefficient by ~20% (Ziegler). A fixed
    # 10000 barely moves it on a short run; "auto" = the run's episodes (steps x rollout_batch_size) / 10
    kl_horizon: int | Literal["auto"] = 10000
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.5
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = 1.0
    # over-long answers (DAPO's soft overlong penalty): 0 up to max_new_tokens - overlong_buffer tokens,
    # then rising linearly to overlong_penalty at max_new_tokens, subtracted from the score. 0: off
    overlong_penalty: float = Field(default=0.0, ge=0.0)
    overlong_buffer: int = Field(default=8, ge=1)
    # PPO-ptx (Ouyang et al. 2022): add ptx_coef x the causal-LM loss on pretraining text to every policy
    # step, against the alignment tax. ptx_data: "world" (the world's training corpus) or text file paths
    ptx_coef: float = 0.0
    ptx_data: str | list[str] = "world"
    ptx_batch_size: int = 4
    ptx_seq_len: int = 128
    # the critic: "reward" = a separate value model initialised from the reward model (as TRL's PPO);
    # "policy_head" = a zero-initialised linear head on the policy's backbone (half the update's work;
    # give it value_warmup_rollouts: 2, which more than doubled its reward gain in bench_ppo.py)
    value_model: Literal["reward", "policy_head"] = "reward"
    # policy_head only. value_head_detached: the value loss trains the head alone, as a probe on the
    # policy's features (no value gradient into the policy's backbone, which then gets the policy loss
    # alone, as with a separate value model). Measured worse in bench_ppo.py: reward gain +0.06 against
    # +0.13 (no warmup), +0.12 against +0.24 (value_warmup_rollouts: 2): the value loss helps the features
    value_head_detached: bool = False
    # policy_head only: rollouts spent, before the first policy update, fitting the head by ridge
    # regression on their returns (their episodes are not trained on: advantages from a critic fitted to
    # the same episodes would be shrunk towards zero)
    value_warmup_rollouts: int = Field(default=0, ge=0)
    # the frozen reference and reward model live in host memory and visit the training device only to score
    # rollouts and samples, so the update's memory peak holds the trained models alone (no effect on a CPU)
    offload_frozen: bool = False
    # LoRA on the policy (null: full fine-tuning with a separate frozen reference copy)
    lora: RLHFLoRA | None = None
    # ppo: Trellis's own PPO; grpo / rloo: TRL's GRPOTrainer / RLOOTrainer on the same prompts and reward
    algorithm: Literal["ppo", "grpo", "rloo"] = "ppo"
    # grpo / rloo: completions sampled per prompt (the group whose mean is the baseline)
    num_generations: int = 4
    grad_clip: float = 1.0
    save_every: int = 20
    log_every: int = 1
    seed: int = 0
    device: str = "auto"
    # the serving engine's batch for rollouts, and the batch of the scoring forward passes
    generation_batch_size: int = 32
    forward_batch_size: int = 64
    # rollout decode steps of a Llama policy through the engine's lean step (the model's own operations
    # without its module overhead; equal logits); false: the model's forward
    lean_decode: bool = True
    # on a CUDA device, replay the lean step from a CUDA graph once every prompt of a rollout is in the
    # running batch (serving/graph_decode.py; logits equal to rounding); false: launch it step by step
    cuda_graphs: bool = True
    # reward-hacking monitor (world prompts only): warn when the reward's trend over this many steps is up
    # while the gold score's falls by more than hacking_gold_drop
    hacking_window: int = 8
    hacking_gold_drop: float = 0.02
    keep_checkpoints: int = 2
    # final greedy gold evaluation on the world's eval prompts; eval_initial also scores the starting policy
    gold_eval: bool = True
    eval_max_new_tokens: int = 48
    eval_initial: bool = True
    # greedy answers of the policy to `prompts` of its prompt set (taken in turn from each axis), scored by
    # the reward model, at step 0, every `every` steps and at the end: samples.jsonl, TensorBoard and the
    # summary's samples_initial / samples_final (trellis.rlhf.samples). null: none
    samples: SampleGenerations | None = None

    @field_validator("kl_horizon")
    @classmethod
    def _kl_horizon_is_positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError("a positive number of episodes or 'auto'")
        return value

    @model_validator(mode="after")
    def _adaptive_kl_needs_a_coefficient_to_scale(self) -> "RLHFConfig":
        if self.adaptive_kl is not False and self.kl_coef <= 0:
            raise ValueError(f"kl_coef: adaptive_kl {self.adaptive_kl!r} scales the coefficient, so it needs "
                             f"kl_coef > 0 (got {self.kl_coef})")
        return self

    @model_validator(mode="after")
    def _overlong_buffer_fits_the_answer(self) -> "RLHFConfig":
        if self.overlong_penalty > 0 and self.overlong_buffer > self.max_new_tokens:
            raise ValueError(f"overlong_buffer: {self.overlong_buffer} tokens is longer than the answers "
                             f"(max_new_tokens {self.max_new_tokens})")
        return self

    @model_validator(mode="after")
    def _fused_scoring_needs_one_minibatch(self) -> "RLHFConfig":
        if self.fuse_scoring_pass and self.minibatch_size < self.rollout_batch_size:
            raise ValueError(f"fuse_scoring_pass needs one minibatch per rollout: minibatch_size "
                             f"({self.minibatch_size}) >= rollout_batch_size ({self.rollout_batch_size})")
        return self

    @model_validator(mode="after")
    def _value_head_options_need_a_value_head(self) -> "RLHFConfig":
        if self.value_model != "policy_head":
            for key in ("value_head_detached", "value_warmup_rollouts"):
                if getattr(self, key):
                    raise ValueError(f"{key} applies to value_model: policy_head only "
                                     f"(value_model is {self.value_model!r})")
        return self
