"""`trellis dpo`: DPO with TRL's DPOTrainer on the same comparison pairs the reward stage reads.

The reference is the input checkpoint (a frozen copy; with LoRA, the model with its adapters disabled).
The summary reports, on held-out pairs, how often the implicit reward beta * log(pi / pi_ref) prefers the
chosen answer per axis (comparable with the reward model's accuracy), and on the world, the gold score of
the policy's greedy answers (comparable with the SFT and RLHF stages').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.checkpoint import check_checkpoint_dir, load_causal_lm, load_tokenizer
from trellis.config import WorldConfig
from trellis.config.dpo import DPOConfig
from trellis.data.chat_template import chat_stop_ids
from trellis.errors import TrellisError
from trellis.reward.data import Pair, load_reward_pairs
from trellis.reward.metrics import pairwise_metrics
from trellis.run import StageRun
from trellis.sft.hf_trainer import (
    common_training_args,
    last_logged,
    make_log_callback,
    resume_point,
    without_stdout_printer,
)
from trellis.sft.lora import check_target_modules, export_trained, peft_lora_config
from trellis.sft.stage import greedy_chat, prepare_tokenizer, world_gold


def _input_model(config: DPOConfig, run_root: Path) -> Path:
    if config.model is not None:
        return check_checkpoint_dir(config.model, need_tokenizer=True)
    sft_final = run_root / "sft" / "final"
    if not sft_final.exists():
        raise TrellisError(f"dpo.model is not set and {sft_final} does not exist: run the sft stage first "
                           "or set dpo.model to a checkpoint directory")
    return check_checkpoint_dir(sft_final, need_tokenizer=True)


def _encode(tokenizer: Any, pairs: list[Pair], max_length: int
            ) -> tuple[list[dict[str, Any]], list[Pair], int]:
    """(rows with token ids for the implicit-reward diagnostics, the pairs that fit, how many did not)."""
    from trellis.dpo.logps import answer_token_ids

    rows, kept, too_long = [], [], 0
    for pair in pairs:
        try:
            chosen = answer_token_ids(tokenizer, pair["prompt"], pair["chosen"])
            rejected = answer_token_ids(tokenizer, pair["prompt"], pair["rejected"])
        except ValueError as exc:
            raise TrellisError(f"{tokenizer.name_or_path}: {exc}") from None
        if max(len(chosen[0]), len(rejected[0])) > max_length:
            too_long += 1
            continue
        kept.append(pair)
        rows.append({"chosen": chosen, "rejected": rejected, "axis": pair.get("axis"),
                     "chosen_len": len(chosen[0]) - chosen[1], "rejected_len": len(rejected[0]) - rejected[1]})
    return rows, kept, too_long


def implicit_reward_metrics(policy: Any, reference: Any, rows: list[dict[str, Any]], pad_token_id: int,
                            beta: float) -> dict[str, Any]:
    from trellis.dpo.logps import sequence_logps

    def reward(side: str) -> list[float]:
        ids = [r[side] for r in rows]
        pol, ref = sequence_logps(policy, ids, pad_token_id), sequence_logps(reference, ids, pad_token_id)
        return [beta * (p - q) for p, q in zip(pol, ref, strict=True)]

    return pairwise_metrics(reward("chosen"), reward("rejected"), [r["axis"] for r in rows],
                            [r["chosen_len"] for r in rows], [r["rejected_len"] for r in rows])


def make_trainer(config: DPOConfig, run: StageRun, model: Any, tokenizer: Any, train: list[Pair],
                 heldout: list[Pair]):
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    def rows(pairs: list[Pair]) -> Any:
        return Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                  for p in pairs])

    eval_ds = rows(heldout) if heldout else None
    args = TRLDPOConfig(**common_training_args(config, run, has_eval=eval_ds is not None), beta=config.beta,
                        loss_type=[config.loss_type])
    peft_config = None
    if config.lora is not None:
        check_target_modules(model, config.lora, "dpo")
        peft_config = peft_lora_config(config.lora)
    return without_stdout_printer(DPOTrainer(model=model, args=args, train_dataset=rows(train), eval_dataset=eval_ds,
                                             processing_class=tokenizer, peft_config=peft_config,
                                             callbacks=[make_log_callback(run)]))


def run(config: DPOConfig, world: WorldConfig, run_root: Path) -> Path:
    model_dir = _input_model(config, run_root)
    train_pairs, heldout_pairs, dropped = load_reward_pairs(config.data, world, config.heldout_fraction, config.seed)
    if not train_pairs:
        raise TrellisError(f"dpo.data: {config.data} gave no usable comparison pairs")

    run = StageRun(run_root, "dpo", config)
    try:
        tokenizer = load_tokenizer(model_dir)
        prepare_tokenizer(tokenizer, model_dir)
        # TRL would cut an over-long pair's end, i.e. the very answers being compared: drop such pairs instead
        _, train_pairs, long_train = _encode(tokenizer, train_pairs, config.max_length)
        heldout_rows, heldout_pairs, long_heldout = _encode(tokenizer, heldout_pairs, config.max_length)
        dropped["over_max_length"] += long_train + long_heldout
        if not train_pairs:
            raise TrellisError(f"dpo.max_length: every training pair is longer than {config.max_length} tokens")

        from transformers import set_seed

        set_seed(config.seed)
        model = load_causal_lm(model_dir)
        eos = chat_stop_ids(tokenizer)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id

        trainer = make_trainer(config, run, model, tokenizer, train_pairs, heldout_pairs)
        resume = resume_point(run)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = trainer.state.log_history

        policy, lora_info = export_trained(trainer.model, run)
        policy.generation_config.eos_token_id = eos

        heldout = None
        if heldout_rows:
            reference = load_causal_lm(model_dir, device=next(policy.parameters()).device)
            heldout = implicit_reward_metrics(policy, reference, heldout_rows, tokenizer.pad_token_id, config.beta)
            run.log(int(trainer.state.global_step), heldout_accuracy=heldout["accuracy"]["overall"],
                    heldout_margin=heldout["margin_mean"])
            del reference

        final = run.save_final_model(policy, tokenizer)
        summary: dict[str, Any] = {
            **(heldout or {"accuracy": {}}),
            "train_loss_final": last_logged(history, "loss"),
            "train_loss_mean": float(output.training_loss),
            "train_reward_accuracy_final": last_logged(history, "rewards/accuracies"),
            "eval_loss_final": last_logged(history, "eval_loss"),
            "steps": int(trainer.state.global_step),
            "train_pairs": len(train_pairs),
            "heldout_pairs": len(heldout_rows),
            "dropped_pairs": dict(+dropped),
            "beta": config.beta,
            "lora": lora_info,
            "resumed_from": str(resume) if resume else None,
            "train_runtime_s": output.metrics.get("train_runtime"),
            "train_steps_per_second": output.metrics.get("train_steps_per_second"),
        }
        if config.data == "world":
            gold = world_gold(policy, tokenizer, world)
            if gold is not None:
                summary["gold_score"] = gold["gold_score"]
                summary["gold"] = {k: v for k, v in gold.items() if k != "samples"}
        prompts = [p["prompt"][-1]["content"] for p in heldout_pairs[:4]]
        summary["samples"] = greedy_chat(policy, tokenizer, prompts)
        run.write_summary(summary)
        return final
    finally:
        run.close()
