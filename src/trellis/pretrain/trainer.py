"""The pretraining loop: tokenizer, packed batches, Llama model, AdamW + warmup/cosine, eval, checkpoints.

A run resumes from the newest checkpoint in its stage directory and then produces exactly the losses an
uninterrupted run would (bitwise on CPU): weights, optimizer, scheduler, RNG and data position are all
restored, and nothing in the loop depends on wall-clock or on how many times it was started.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError
from trellis.run import StageRun, save_atomic


def _autocast(precision: str, device):
    import torch

    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def causal_lm_loss(model, batch, precision: str, reduction: str = "mean"):
    """Next-token cross-entropy of windows [B, T+1]: inputs are batch[:, :-1], targets batch[:, 1:]."""
    import torch.nn.functional as F

    inputs, targets = batch[:, :-1], batch[:, 1:]
    with _autocast(precision, batch.device):
        logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction=reduction)


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
    from trellis.device import resolve_device
    from trellis.models.flops import count_params, train_flops_per_token
    from trellis.models.presets import build_model_config, resolve_shape
    from trellis.pretrain.checkpointing import (
        load_model_weights,
        load_trainer_state,
        rng_state,
        save_checkpoint,
        set_rng_state,
        write_hf_dir,
    )
    from trellis.pretrain.corpus import load_corpus
    from trellis.pretrain.optim import build_optimizer
    from trellis.pretrain.schedule import build_scheduler

    run = StageRun(run_root, "pretrain", cfg)
    try:
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        shape = resolve_shape(cfg.model)
        if cfg.seq_len > shape.max_seq_len:
            raise TrellisError(f"pretrain.seq_len: {cfg.seq_len} exceeds the model's max_seq_len {shape.max_seq_len}")

        train_docs, val_docs = load_corpus(cfg.data, world)
        resume = run.latest_checkpoint()
        tokenizer = _tokenizer(cfg, resume, train_docs)
        ids = special_token_ids(tokenizer)
        eot = ids["endoftext"]
        sampler = PackedSampler(_encode(tokenizer, train_docs), eot, cfg.seq_len, cfg.batch_size, seed=cfg.seed)
        val_windows = validation_windows(_encode(tokenizer, val_docs), eot, cfg.seq_len,
                                         max_windows=cfg.eval_batches * cfg.batch_size)

        eos_ids = [ids["im_end"], eot]
        model_config = build_model_config(cfg.model, len(tokenizer), pad_token_id=ids["pad"], eos_token_id=eos_ids)
        model = LlamaForCausalLM(model_config)
        model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=ids["pad"])
        model.to(device)
        model.train()
        optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2),
                                    eps=cfg.eps)
        scheduler = build_scheduler(optimizer, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    total_steps=cfg.steps)
        n_params = count_params(shape, len(tokenizer)).total
        flops_per_token = train_flops_per_token(shape, cfg.seq_len, len(tokenizer))

        if resume is not None:
            state = load_trainer_state(resume)
            load_model_weights(model, resume)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            sampler.load_state_dict(state["data"])
            set_rng_state(state["rng"])
            step, tokens, train_time = int(state["step"]), int(state["tokens"]), float(state["train_time"])
            val_ppl_initial, last_loss = float(state["val_ppl_initial"]), state["train_loss_last"]
            run.truncate_metrics_after(step)
            print(f"[trellis] pretrain: resuming from {resume} (step {step})", flush=True)
        else:
            step, tokens, train_time, last_loss = 0, 0, 0.0, None
            val_loss, val_ppl_initial = evaluate_ppl(model, val_windows, cfg.batch_size, cfg.precision, device)
            run.log(0, val_loss=val_loss, val_ppl=val_ppl_initial, params=n_params)

        def trainer_state() -> dict[str, Any]:
            return {"step": step, "tokens": tokens, "train_time": train_time, "val_ppl_initial": val_ppl_initial,
                    "train_loss_last": last_loss, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "data": sampler.state_dict(), "rng": rng_state()}

        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        bar = run.progress(total=cfg.steps, initial=step)
        while step < cfg.steps:
            t0 = time.perf_counter()
            batch = sampler.next_batch().to(device)
            loss = causal_lm_loss(model, batch, cfg.precision)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last_loss = float(loss.detach())
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

            if step % cfg.log_every == 0 or step == cfg.steps:
                run.log(step, loss=window_loss / window_steps, lr=lr, grad_norm=float(grad_norm),
                        tokens=tokens, tokens_per_s=window_tokens / max(window_time, 1e-9))
                bar.set_postfix(loss=f"{window_loss / window_steps:.3f}", lr=f"{lr:.2e}")
                window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
            if step % cfg.eval_every == 0 and step != cfg.steps:
                val_loss, val_ppl = evaluate_ppl(model, val_windows, cfg.batch_size, cfg.precision, device)
                run.log(step, val_loss=val_loss, val_ppl=val_ppl)
            if step % cfg.save_every == 0:
                state = trainer_state()
                save_atomic(run.checkpoint_path(step), lambda d, s=state: save_checkpoint(d, model, tokenizer, s))
                run.prune_checkpoints(cfg.keep_last)
            if stop_after is not None and step >= stop_after:
                bar.close()
                return run.final_dir
        bar.close()

        val_loss, val_ppl_final = evaluate_ppl(model, val_windows, cfg.batch_size, cfg.precision, device)
        # a rerun of a finished stage resumes at the last step, whose final eval may already be logged
        if not any(r["step"] == step and "val_ppl" in r for r in run.read_metrics()):
            run.log(step, val_loss=val_loss, val_ppl=val_ppl_final)
        save_atomic(run.final_dir, lambda d: write_hf_dir(d, model, tokenizer))
        tokens_per_s = tokens / train_time if train_time > 0 else 0.0
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
            "train_flops": flops_per_token * tokens,
            "vocab_size": len(tokenizer),
            "device": str(device),
        })
        return run.final_dir
    finally:
        run.close()
