"""The pretraining loop: tokenizer, packed batches, Llama model, AdamW + warmup/cosine, eval, checkpoints.

A run resumes from the newest checkpoint in its stage directory and then produces exactly the losses an
uninterrupted run would (bitwise on CPU): weights, optimizer, scheduler, RNG and data position are all
restored, and nothing in the loop depends on wall-clock or on how many times it was started.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError
from trellis.pretrain.step import autocast as _autocast  # noqa: F401 - kept for importers
from trellis.pretrain.step import causal_lm_loss
from trellis.run import StageRun, save_atomic


def evaluate_ppl(model, windows, batch_size: int, precision: str, device) -> tuple[float, float]:
    """(mean loss per token, perplexity) over fixed validation windows."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, windows.shape[0], batch_size):
            batch = windows[i : i + batch_size].to(device)
            total += float(causal_lm_loss(model, batch, precision, reduction="sum"))
            count += batch[:, 1:].numel()
    model.train(was_training)
    loss = total / max(count, 1)
    return loss, math.exp(min(loss, 50.0))


def check_same_shape(ckpt: Path, model_config) -> None:
    """A resume into a model of another shape stops before anything is loaded or written."""
    import json

    path = ckpt / "config.json"
    if not path.exists():
        raise TrellisError(f"{ckpt}: checkpoint has no config.json")
    saved = json.loads(path.read_text())
    keys = {"hidden_size": "hidden_size", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
            "num_key_value_heads": "num_kv_heads", "intermediate_size": "intermediate_size",
            "tie_word_embeddings": "tie_embeddings", "vocab_size": "vocab_size"}
    diffs = [f"model.{ours} {getattr(model_config, hf)} vs {saved.get(hf)}" for hf, ours in keys.items()
             if saved.get(hf) != getattr(model_config, hf)]
    if diffs:
        raise TrellisError(f"{ckpt}: checkpoint is of another model shape ({'; '.join(diffs)} in the checkpoint); "
                           "resume with the same model, or use a new run name")


def embedding_rows(cfg: PretrainConfig, tokenizer_size: int) -> int:
    """The embedding table's rows: the tokenizer's size, or model.vocab_size when it pads the table."""
    rows = cfg.model.vocab_size
    if rows is None:
        return tokenizer_size
    if rows < tokenizer_size:
        raise TrellisError(f"pretrain.model.vocab_size: {rows} is smaller than the tokenizer's {tokenizer_size} "
                           "tokens; leave it unset or raise it")
    return rows


def build_callbacks(cfg: PretrainConfig) -> list:
    from trellis.pretrain.averaging import EMA, CheckpointAverage
    from trellis.pretrain.monitors import ActivationStats, CommTime, GradGroupNorms, Memory, Throughput

    callbacks: list = []
    mon = cfg.monitor
    if mon.grad_norm_groups:
        callbacks.append(GradGroupNorms())
    if mon.activations_every > 0:
        callbacks.append(ActivationStats(mon.activations_every))
    if mon.mfu:
        callbacks.append(Throughput(mon.peak_tflops))
    if mon.memory:
        callbacks.append(Memory())
    if mon.communication:
        callbacks.append(CommTime())
    avg = cfg.averaging
    if avg.last_fraction is not None:
        if not 0.0 < avg.last_fraction <= 1.0:
            raise TrellisError(f"pretrain.averaging.last_fraction: {avg.last_fraction}, must lie in (0, 1]")
        callbacks.append(CheckpointAverage(avg.last_fraction, cfg.save_every, cfg.steps))
    if avg.ema_decay is not None:
        if not 0.0 < avg.ema_decay < 1.0:
            raise TrellisError(f"pretrain.averaging.ema_decay: {avg.ema_decay}, must lie in (0, 1)")
        callbacks.append(EMA(avg.ema_decay))
    return callbacks


def _tokenizer(cfg: PretrainConfig, resume: Path | None, train_docs: list[str]):
    from trellis.checkpoint import load_tokenizer
    from trellis.data.tokenizer import ensure_chatml, train_bpe_tokenizer

    if resume is not None:
        return load_tokenizer(resume)
    if cfg.tokenizer.path:
        return ensure_chatml(load_tokenizer(cfg.tokenizer.path))
    return train_bpe_tokenizer(train_docs, cfg.tokenizer.vocab_size)


def _encode(tokenizer, docs: list[str]) -> list[list[int]]:
    return tokenizer(docs, add_special_tokens=False)["input_ids"]


def pretrain(cfg: PretrainConfig, world: WorldConfig, run_root: Path, stop_after: int | None = None) -> Path:
    """Train (or resume) and write final/; with `stop_after`, return after that step as if killed there."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from trellis.data.packing import PackedSampler, validation_windows
    from trellis.data.tokenizer import special_token_ids
    from trellis.models.flops import count_params, train_flops_per_token
    from trellis.models.presets import build_model_config, resolve_shape
    from trellis.pretrain.batching import (
        check_curriculum,
        curriculum_length,
        cut_windows,
        micro_batches,
        plan_batch,
    )
    from trellis.pretrain.checkpointing import (
        load_model_weights,
        load_trainer_state,
        rng_state,
        save_checkpoint,
        set_rng_state,
        write_hf_dir,
    )
    from trellis.pretrain.corpus import load_corpus, load_val_sets
    from trellis.pretrain.distributed import (
        QuietRun,
        any_rank,
        barrier,
        init_distributed,
        mean_over_ranks,
        wrap_ddp,
    )
    from trellis.pretrain.early_stop import EarlyStop
    from trellis.pretrain.monitors import Callbacks, LoopContext, StepInfo
    from trellis.pretrain.optim import build_optimizer
    from trellis.pretrain.schedule import build_scheduler, resolve_schedule
    from trellis.pretrain.step import build_loss_scaler, next_token_loss_module, train_step

    dist_info, device = init_distributed(cfg.device)
    run = StageRun(run_root, "pretrain", cfg) if dist_info.is_main else QuietRun(run_root, "pretrain")
    try:
        torch.manual_seed(cfg.seed)
        shape = resolve_shape(cfg.model)
        if cfg.seq_len > shape.max_seq_len:
            raise TrellisError(f"pretrain.seq_len: {cfg.seq_len} exceeds the model's max_seq_len {shape.max_seq_len}")
        schedule = resolve_schedule(cfg)
        plan = plan_batch(cfg, dist_info.world_size)
        if cfg.seq_len_curriculum is not None:
            check_curriculum(cfg.seq_len_curriculum, cfg.seq_len)
        stopper = EarlyStop(cfg.early_stop)

        train_docs, val_docs = load_corpus(cfg.data, world)
        val_sets = load_val_sets(cfg.data)
        resume = run.latest_checkpoint()
        tokenizer = _tokenizer(cfg, resume, train_docs)
        ids = special_token_ids(tokenizer)
        eot = ids["endoftext"]
        sampler = PackedSampler(_encode(tokenizer, train_docs), eot, cfg.seq_len, plan.global_batch_size,
                                seed=cfg.seed)
        val_windows = validation_windows(_encode(tokenizer, val_docs), eot, cfg.seq_len,
                                         max_windows=cfg.eval_batches * cfg.batch_size)
        named_val = {name: validation_windows(_encode(tokenizer, docs), eot, cfg.seq_len,
                                              max_windows=cfg.eval_batches * cfg.batch_size)
                     for name, docs in val_sets.items()}
        eval_bs = plan.micro_batch_size if cfg.micro_batch_size is not None else cfg.batch_size

        eos_ids = [ids["im_end"], eot]
        vocab = embedding_rows(cfg, len(tokenizer))
        model_config = build_model_config(cfg.model, vocab, pad_token_id=ids["pad"], eos_token_id=eos_ids,
                                          device_type=device.type, precision=cfg.precision)
        if resume is not None:
            check_same_shape(resume, model_config)
        model = LlamaForCausalLM(model_config)
        model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=ids["pad"])
        model.to(device)
        model.train()
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # the loss module (compiled, under DDP) trains; `model` (same parameters) is saved and evaluated
        train_model = wrap_ddp(next_token_loss_module(model, cfg.precision), dist_info, device)
        if cfg.compile:
            train_model = torch.compile(train_model)
        optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                                    eps=cfg.eps, fused=cfg.fused_optimizer)
        scheduler = build_scheduler(optimizer, lr=schedule.lr, min_lr=schedule.min_lr,
                                    warmup_steps=schedule.warmup_steps, total_steps=schedule.total_steps,
                                    kind=schedule.kind)
        scaler = build_loss_scaler(cfg.precision, device, cfg.loss_scale_init, cfg.loss_scale_growth_interval)
        n_params = count_params(shape, vocab).total
        flops_per_token = train_flops_per_token(shape, cfg.seq_len, vocab)

        def evaluate_all(m) -> dict[str, float]:
            loss, ppl = evaluate_ppl(m, val_windows, eval_bs, cfg.precision, device)
            out = {"val_loss": loss, "val_ppl": ppl}
            for name, windows in named_val.items():
                out[f"val_loss.{name}"], out[f"val_ppl.{name}"] = evaluate_ppl(m, windows, eval_bs, cfg.precision,
                                                                             device)
            return out

        def finish_weights(dir_name: str, weights: dict[str, Any]) -> float:
            """Load averaged weights into a copy of the model, write it as run_dir/<dir_name>/, its val ppl."""
            import copy

            other = copy.deepcopy(model)
            other.load_state_dict({k: v.to(device) for k, v in weights.items()}, strict=False)
            if getattr(other.config, "tie_word_embeddings", False):
                other.tie_weights()
            save_atomic(run.dir / dir_name, lambda d: write_hf_dir(d, other, tokenizer))
            return evaluate_all(other)["val_ppl"]

        ctx = LoopContext(model=model, optimizer=optimizer, device=device, precision=cfg.precision,
                          log_every=cfg.log_every, total_steps=cfg.steps,
                          flops_per_token=lambda n: train_flops_per_token(shape, n, vocab),
                          extras={"finish_weights": finish_weights,
                                  "ddp": train_model if dist_info.enabled and not cfg.compile else None})
        # monitors and averaging run on rank 0 only: they read weights and gradients that all ranks share
        callbacks = Callbacks(build_callbacks(cfg) if dist_info.is_main else [])

        stop_reason: str | None = None
        if resume is not None:
            state = load_trainer_state(resume)
            load_model_weights(model, resume)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and "loss_scaler" in state:
                scaler.load_state_dict(state["loss_scaler"])
            callbacks.load_state_dict(state.get("callbacks", {}))
            if "early_stop" in state:
                stopper.load_state_dict(state["early_stop"])
                stop_reason = state.get("stopped_early") or None
            skipped_steps = int(state.get("skipped_steps", 0))
            sampler.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            step, tokens, train_time = int(state["step"]), int(state["tokens"]), float(state["train_time"])
            val_ppl_initial, last_loss = float(state["val_ppl_initial"]), state["train_loss_last"]
            run.truncate_metrics_after(step)
            print(f"[trellis] pretrain: resuming from {resume} (step {step})", flush=True)
        else:
            step, tokens, train_time, last_loss, skipped_steps = 0, 0, 0.0, None, 0
            initial = evaluate_all(model)
            val_ppl_initial = initial["val_ppl"]
            run.log(0, **initial, params=n_params)

        def trainer_state() -> dict[str, Any]:
            state = {"step": step, "tokens": tokens, "train_time": train_time, "val_ppl_initial": val_ppl_initial,
                     "train_loss_last": last_loss, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "data": sampler.state_dict(), "rng": rng_state()}
            # optional parts only when in use, so a default run's checkpoint is unchanged
            if scaler is not None:
                state["loss_scaler"] = scaler.state_dict()
                state["skipped_steps"] = skipped_steps
            if callbacks.state_dict():
                state["callbacks"] = callbacks.state_dict()
            if stopper.enabled:
                state["early_stop"] = stopper.state_dict()
                state["stopped_early"] = stop_reason or ""
            return state

        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        bar = run.progress(total=cfg.steps, initial=step)
        while step < cfg.steps and not stop_reason:
            t0 = time.perf_counter()
            length = curriculum_length(step, cfg.steps, cfg.seq_len_curriculum, cfg.seq_len)
            batch = cut_windows(sampler.next_batch(), length).to(device)
            callbacks.step_begin(ctx, step + 1)
            result = train_step(train_model, micro_batches(batch, plan, dist_info.rank), optimizer, precision=cfg.precision,
                                grad_clip=cfg.grad_clip, scaler=scaler, world_size=plan.world_size,
                                global_tokens=batch[:, 1:].numel(),
                                on_grads=lambda s=step + 1: callbacks.grads(ctx, s), loss_fn=train_model)
            lr = scheduler.get_last_lr()[0]
            # as in HF Trainer and Megatron, a step skipped on fp16 overflow does not advance the schedule
            if not result.skipped:
                scheduler.step()
            last_loss = mean_over_ranks(result.loss, dist_info, device)
            skipped_steps += int(result.skipped)
            elapsed = time.perf_counter() - t0
            step += 1
            n_tok = batch[:, 1:].numel()
            tokens += n_tok
            train_time += elapsed
            window_loss += last_loss
            window_steps += 1
            window_tokens += n_tok
            window_time += elapsed
            bar.update(1)

            is_log = step % cfg.log_every == 0 or step == cfg.steps
            extra = callbacks.step_end(ctx, StepInfo(step=step, tokens=n_tok, seconds=elapsed, seq_len=length,
                                                     loss=last_loss, grad_norm=result.grad_norm, is_log_step=is_log))
            if scaler is not None and is_log:
                extra = {"loss_scale": result.loss_scale, "skipped_steps": skipped_steps, **extra}
            if cfg.seq_len_curriculum is not None and is_log:
                extra = {"seq_len": length, **extra}
            if is_log:
                run.log(step, loss=window_loss / window_steps, lr=lr, grad_norm=result.grad_norm,
                        tokens=tokens, tokens_per_s=window_tokens / max(window_time, 1e-9), **extra)
                bar.set_postfix(loss=f"{window_loss / window_steps:.3f}", lr=f"{lr:.2e}")
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            elif extra:
                run.log(step, **extra)
            if step % cfg.eval_every == 0 and step != cfg.steps:
                evals = evaluate_all(model)
                run.log(step, **evals)
                reason = stopper.update(evals["val_ppl"])
                # every rank evaluates the same windows, but rank 0's verdict binds them all
                if any_rank(bool(reason) and dist_info.is_main, dist_info, device):
                    stop_reason = reason or "early stop decided on rank 0"
            if step % cfg.save_every == 0 or (stop_reason and stop_after is None):
                state = trainer_state()
                if dist_info.is_main:
                    save_atomic(run.checkpoint_path(step), lambda d, s=state: save_checkpoint(d, model, tokenizer, s))
                    run.prune_checkpoints(cfg.keep_last)
                barrier(dist_info)
            if stop_after is not None and step >= stop_after:
                bar.close()
                return run.final_dir
            if stop_reason:
                print(f"[trellis] pretrain: early stop at step {step}: {stop_reason}", flush=True)
                break
        bar.close()

        final_evals = evaluate_all(model)
        val_loss, val_ppl_final = final_evals["val_loss"], final_evals["val_ppl"]
        # a rerun of a finished stage resumes at the last step, whose final eval may already be logged
        if not any(r["step"] == step and "val_ppl" in r for r in run.read_metrics()):
            run.log(step, **final_evals)
        if dist_info.is_main:
            save_atomic(run.final_dir, lambda d: write_hf_dir(d, model, tokenizer))
        end = callbacks.train_end(ctx)
        barrier(dist_info)
        tokens_per_s = tokens / train_time if train_time > 0 else 0.0
        train_flops = flops_per_token * tokens
        if cfg.seq_len_curriculum is not None:  # shorter windows early on: less attention work per token
            train_flops = sum(ctx.flops_per_token(curriculum_length(s, cfg.steps, cfg.seq_len_curriculum,
                                                                    cfg.seq_len)) for s in range(step)) \
                * plan.tokens_per_step
        run.write_summary({
            "val_ppl_initial": val_ppl_initial,
            "val_ppl_final": val_ppl_final,
            "val_loss_final": val_loss,
            "train_loss_final": last_loss,
            "steps": step,
            "tokens": tokens,
            "params": n_params,
            "tokens_per_s": round(tokens_per_s, 1),
            "train_seconds": round(train_time, 2),
            "train_flops": train_flops,
            "vocab_size": vocab,
            "device": str(device),
            "attn_implementation": model_config._attn_implementation,
            **{k: v for k, v in final_evals.items() if "." in k},
            **({"loss_scale_final": scaler.get_scale(), "skipped_steps": skipped_steps} if scaler else {}),
            **({"stopped_early": stop_reason} if stop_reason else {}),
            **({"global_batch_size": plan.global_batch_size, "micro_batch_size": plan.micro_batch_size,
                "accumulation_steps": plan.accumulation_steps} if plan.accumulation_steps > 1 else {}),
            **end,
        })
        return run.final_dir
    finally:
        run.close()
