"""`trellis reward`: a Bradley-Terry reward model.

One head (default): TRL's RewardTrainer. `heads` set: one score output per axis on one backbone
(trellis.reward.multihead), saved as a plain sequence-classification checkpoint whose config names the
axes and how they combine into the scalar PPO uses (trellis.reward.heads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.checkpoint import check_checkpoint_dir, load_tokenizer
from trellis.config import RewardConfig, WorldConfig
from trellis.data.chat_template import chat_stop_ids
from trellis.errors import TrellisError
from trellis.reward.data import Pair, load_reward_pairs
from trellis.reward.evaluate import evaluate_pairs
from trellis.reward.heads import COMBINATION_KEY, combination_spec
from trellis.reward.tokenize import tokenize_pairs
from trellis.run import StageRun, save_atomic
from trellis.sft.hf_trainer import (
    common_training_args,
    last_logged,
    make_log_callback,
    resume_point,
    without_stdout_printer,
)
from trellis.sft.stage import prepare_tokenizer

__all__ = ["evaluate_pairs", "load_reward_backbone", "run", "tokenize_pairs"]


def load_reward_backbone(path: Path, pad_token_id: int, heads: list[str] | None = None):
    """A sequence-classification model on top of a causal LM checkpoint: one output (the reward), or one
    per axis in `heads`."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    labels = list(heads) if heads else ["reward"]
    try:
        config = AutoConfig.from_pretrained(str(path))
        # a copied classifier config keeps its label maps, which would contradict num_labels
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.num_labels = len(labels)
        config.pad_token_id = pad_token_id
        # the new score head is always "missing from the checkpoint": that report is noise here
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one named line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TrellisError(f"{path}: cannot load as a reward model: {first}") from None
    return model


def _check_axes(pairs: list[Pair], heads: list[str], data: Any) -> None:
    for pair in pairs:
        if pair.get("axis") not in heads:
            raise TrellisError(
                f"reward.heads: a pair of {data!r} is rated on axis {pair.get('axis')!r}, which has no head "
                f"(heads: {heads}); tag each data source with `axis:` or add the axis to reward.heads")


def _trainer_rows(rows: list[dict[str, Any]], config: RewardConfig) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row: dict[str, Any] = {"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
        if config.heads:
            row["head"] = config.heads.index(r["axis"])
        elif config.margin:
            row["margin"] = config.margin
        out.append(row)
    return out


def make_trainer(config: RewardConfig, run: StageRun, model: Any, tokenizer: Any,
                 train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]]):
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    train_ds = Dataset.from_list(_trainer_rows(train_rows, config))
    eval_ds = Dataset.from_list(_trainer_rows(heldout_rows, config)) if heldout_rows else None
    args = TRLRewardConfig(**common_training_args(config, run, has_eval=eval_ds is not None),
                           center_rewards_coefficient=config.center_rewards_coefficient,
                           # the multi-head collator needs the "head" column the model does not take
                           **({"remove_unused_columns": False} if config.heads else {}))
    if not config.heads:
        return without_stdout_printer(RewardTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=[make_log_callback(run)]))
    from trellis.reward.multihead import HeadIndexCollator, MultiHeadRewardTrainer

    return without_stdout_printer(MultiHeadRewardTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=HeadIndexCollator(pad_token_id=tokenizer.pad_token_id), callbacks=[make_log_callback(run)],
        margin=config.margin, center_rewards_coefficient=config.center_rewards_coefficient))


def run(config: RewardConfig, world: WorldConfig, run_root: Path) -> Path:
    if config.model is None:
        raise TrellisError("reward.model: no input checkpoint (set reward.model or run the sft stage first)")
    model_dir = check_checkpoint_dir(config.model, need_tokenizer=True)
    train_pairs, heldout_pairs, dropped = load_reward_pairs(config.data, world, config.heldout_fraction, config.seed)
    if not train_pairs:
        raise TrellisError(f"reward.data: {config.data} gave no usable comparison pairs")
    if config.heads:
        _check_axes(train_pairs + heldout_pairs, config.heads, config.data)
    spec = combination_spec(config.heads, config.combine) if config.heads else None

    run = StageRun(run_root, "reward", config)
    try:
        tokenizer = load_tokenizer(model_dir)
        prepare_tokenizer(tokenizer, model_dir)
        train_rows, length_train = tokenize_pairs(tokenizer, train_pairs, config.max_length, config.over_length)
        heldout_rows, length_heldout = tokenize_pairs(tokenizer, heldout_pairs, config.max_length,
                                                      config.over_length)
        length_counts = length_train + length_heldout
        dropped["over_max_length"] += length_counts["over_max_length"]
        dropped = +dropped  # no zero counts in the summary
        if not train_rows:
            raise TrellisError(f"reward.max_length: every training pair is longer than {config.max_length} tokens")

        from transformers import GenerationConfig, set_seed

        set_seed(config.seed)  # the score head is freshly initialised: make it the same every run
        model = load_reward_backbone(model_dir, tokenizer.pad_token_id, config.heads)
        from trellis.device import resolve_device

        model.to(resolve_device(config.device))  # the initial held-out scoring runs where training will
        if spec is not None:
            setattr(model.config, COMBINATION_KEY, spec)
        initial = evaluate_pairs(model, heldout_rows, tokenizer.pad_token_id, spec=spec) if heldout_rows else None

        trainer = make_trainer(config, run, model, tokenizer, train_rows, heldout_rows)
        resume = resume_point(run)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = trainer.state.log_history
        model = trainer.model

        final_metrics = (evaluate_pairs(model, heldout_rows, tokenizer.pad_token_id, spec=spec)
                         if heldout_rows else None)
        if final_metrics is not None:
            run.log(int(trainer.state.global_step), heldout_accuracy=final_metrics["accuracy"]["overall"],
                    heldout_margin=final_metrics["margin_mean"])

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            GenerationConfig(eos_token_id=chat_stop_ids(tokenizer),
                             pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)

        final = save_atomic(run.final_dir, write)

        summary: dict[str, Any] = {
            **(final_metrics or {"accuracy": {}}),
            "accuracy_initial": initial["accuracy"] if initial else None,
            "margin_mean_initial": initial["margin_mean"] if initial else None,
            "heads": spec,
            "train_loss_final": last_logged(history, "loss"),
            "train_loss_mean": float(output.training_loss),
            "steps": int(trainer.state.global_step),
            "train_pairs": len(train_rows),
            "heldout_pairs": len(heldout_rows),
            "dropped_pairs": dict(dropped),
            "truncated_pairs": length_counts["truncated"],
            "resumed_from": str(resume) if resume else None,
            "train_runtime_s": output.metrics.get("train_runtime"),
            "train_steps_per_second": output.metrics.get("train_steps_per_second"),
        }
        run.write_summary(summary)
        return final
    finally:
        run.close()
