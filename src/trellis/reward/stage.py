"""`trellis reward`: a Bradley-Terry reward model trained with TRL's RewardTrainer.

Pairs are tokenized here with the checkpoint's chat template (prompt + answer, as TRL would), so training,
the max_length filter and the held-out diagnostics all see the same token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.checkpoint import check_checkpoint_dir, load_tokenizer
from trellis.config import RewardConfig, WorldConfig
from trellis.data.chat_template import chat_stop_ids
from trellis.errors import TrellisError
from trellis.reward.data import Pair, load_reward_pairs
from trellis.reward.metrics import pairwise_metrics, score_token_ids
from trellis.run import StageRun, save_atomic
from trellis.sft.hf_trainer import (
    common_training_args,
    last_logged,
    make_log_callback,
    resume_point,
    without_stdout_printer,
)
from trellis.sft.stage import prepare_tokenizer


def load_reward_backbone(path: Path, pad_token_id: int):
    """A sequence-classification model with one output (the reward) on top of a causal LM checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    try:
        config = AutoConfig.from_pretrained(str(path))
        # a copied classifier config keeps its label maps, which would contradict num_labels=1
        config.id2label = {0: "reward"}
        config.label2id = {"reward": 0}
        config.num_labels = 1
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


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    return list(out["input_ids"])


def tokenize_pairs(tokenizer: Any, pairs: list[Pair], max_length: int | None) -> tuple[list[dict[str, Any]], int]:
    """Rows {chosen_ids, rejected_ids, axis, chosen_len, rejected_len}; pairs over max_length are dropped."""
    rows, too_long = [], 0
    for pair in pairs:
        chosen = _ids(tokenizer, pair["prompt"] + pair["chosen"])
        rejected = _ids(tokenizer, pair["prompt"] + pair["rejected"])
        if max_length is not None and max(len(chosen), len(rejected)) > max_length:
            too_long += 1
            continue
        lengths = [len(tokenizer("".join(m["content"] for m in pair[k]), add_special_tokens=False)["input_ids"])
                   for k in ("chosen", "rejected")]
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "axis": pair.get("axis"), "kind": pair.get("kind"),
                     "chosen_len": lengths[0], "rejected_len": lengths[1]})
    return rows, too_long


def evaluate_pairs(model: Any, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int = 32) -> dict[str, Any]:
    chosen = score_token_ids(model, [r["chosen_ids"] for r in rows], pad_token_id, batch_size)
    rejected = score_token_ids(model, [r["rejected_ids"] for r in rows], pad_token_id, batch_size)
    metrics = pairwise_metrics(chosen, rejected, [r["axis"] for r in rows],
                               [r["chosen_len"] for r in rows], [r["rejected_len"] for r in rows])
    if any(r["kind"] for r in rows):  # world pairs: which kinds of question the model gets wrong
        groups = [f"{r['axis']}/{r['kind']}" for r in rows]
        metrics["accuracy_by_kind"] = pairwise_metrics(chosen, rejected, groups, [0] * len(rows),
                                                       [0] * len(rows))["accuracy"]
    return metrics


def run(config: RewardConfig, world: WorldConfig, run_root: Path) -> Path:
    if config.model is None:
        raise TrellisError("reward.model: no input checkpoint (set reward.model or run the sft stage first)")
    model_dir = check_checkpoint_dir(config.model, need_tokenizer=True)
    train_pairs, heldout_pairs, dropped = load_reward_pairs(config.data, world, config.heldout_fraction, config.seed)
    if not train_pairs:
        raise TrellisError(f"reward.data: {config.data} gave no usable comparison pairs")

    from datasets import Dataset
    from transformers import GenerationConfig
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    run = StageRun(run_root, "reward", config)
    try:
        tokenizer = load_tokenizer(model_dir)
        prepare_tokenizer(tokenizer, model_dir)
        train_rows, long_train = tokenize_pairs(tokenizer, train_pairs, config.max_length)
        heldout_rows, long_heldout = tokenize_pairs(tokenizer, heldout_pairs, config.max_length)
        if long_train + long_heldout:
            dropped["over_max_length"] += long_train + long_heldout
        if not train_rows:
            raise TrellisError(f"reward.max_length: every training pair is longer than {config.max_length} tokens")

        from transformers import set_seed

        set_seed(config.seed)  # the score head is freshly initialised: make it the same every run
        model = load_reward_backbone(model_dir, tokenizer.pad_token_id)
        initial = evaluate_pairs(model, heldout_rows, tokenizer.pad_token_id) if heldout_rows else None

        def trainer_ds(rows: list[dict[str, Any]]):
            return Dataset.from_list([{"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
                                      for r in rows])

        eval_ds = trainer_ds(heldout_rows) if heldout_rows else None
        args = TRLRewardConfig(
            **common_training_args(config, run, has_eval=eval_ds is not None),
            center_rewards_coefficient=config.center_rewards_coefficient,
        )
        trainer = without_stdout_printer(RewardTrainer(
            model=model, args=args, train_dataset=trainer_ds(train_rows), eval_dataset=eval_ds,
            processing_class=tokenizer, callbacks=[make_log_callback(run)]))
        resume = resume_point(run)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = trainer.state.log_history
        model = trainer.model

        final_metrics = evaluate_pairs(model, heldout_rows, tokenizer.pad_token_id) if heldout_rows else None
        if final_metrics is not None:
            run.log(int(trainer.state.global_step), heldout_accuracy=final_metrics["accuracy"]["overall"],
                    heldout_margin=final_metrics["margin_mean"])

        def write(tmp: Path) -> None:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            GenerationConfig(eos_token_id=chat_stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id).save_pretrained(tmp)

        final = save_atomic(run.final_dir, write)

        summary: dict[str, Any] = {
            **(final_metrics or {"accuracy": {}}),
            "accuracy_initial": initial["accuracy"] if initial else None,
            "margin_mean_initial": initial["margin_mean"] if initial else None,
            "train_loss_final": last_logged(history, "loss"),
            "train_loss_mean": float(output.training_loss),
            "steps": int(trainer.state.global_step),
            "train_pairs": len(train_rows),
            "heldout_pairs": len(heldout_rows),
            "dropped_pairs": dict(dropped),
            "resumed_from": str(resume) if resume else None,
            "train_runtime_s": output.metrics.get("train_runtime"),
            "train_steps_per_second": output.metrics.get("train_steps_per_second"),
        }
        run.write_summary(summary)
        return final
    finally:
        run.close()
