"""`trellis reward`: a Bradley-Terry reward model.

One head (default): TRL's RewardTrainer. `heads` set: one score output per axis on one backbone
(trellis.reward.multihead), saved as a plain sequence-classification checkpoint whose config names the
axes and how they combine into the scalar PPO uses (trellis.reward.heads). `heads` with
`separate_models`: one single-head model per axis (trellis.reward.separate), saved together as an
ensemble checkpoint (trellis.reward.ensemble).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.checkpoint import check_checkpoint_dir, load_tokenizer, quiet_transformers
from trellis.config import RewardConfig, WorldConfig
from trellis.data.chat_template import chat_stop_ids
from trellis.errors import TrellisError
from trellis.reward.data import Pair, load_reward_pairs
from trellis.reward.evaluate import evaluate_pairs, pair_diagnostics
from trellis.reward.heads import COMBINATION_KEY, combination_spec, fit_constraint_threshold
from trellis.reward.metrics import score_token_ids
from trellis.reward.tokenize import tokenize_pairs
from trellis.reward.training import PairScores, TrainedReward, TrainingSlot
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

    labels = list(heads) if heads else ["reward"]
    try:
        config = AutoConfig.from_pretrained(str(path))
        # a copied classifier config keeps its label maps, which would contradict num_labels
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
        config.num_labels = len(labels)
        config.pad_token_id = pad_token_id
        # the new score head is always "missing from the checkpoint": that report is noise here
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config, dtype=torch.float32)
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


def _trainer_rows(rows: list[dict[str, Any]], heads: list[str] | None, margin: float) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        row: dict[str, Any] = {"chosen_ids": r["chosen_ids"], "rejected_ids": r["rejected_ids"]}
        if heads:
            row["head"] = heads.index(r["axis"])
        elif margin:
            row["margin"] = margin
        out.append(row)
    return out


def make_trainer(config: RewardConfig, run: StageRun, model: Any, tokenizer: Any,
                 train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]],
                 member: TrainingSlot | None = None):
    """TRL's RewardTrainer for one head, Trellis's multi-head trainer for `config.heads` on one backbone.
    `member` (separate models): one single-head model of several sharing the stage's run."""
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    slot = member or TrainingSlot()
    heads = None if member is not None else config.heads
    train_ds = Dataset.from_list(_trainer_rows(train_rows, heads, config.margin))
    eval_ds = Dataset.from_list(_trainer_rows(heldout_rows, heads, config.margin)) if heldout_rows else None
    args = TRLRewardConfig(**common_training_args(config, run, has_eval=eval_ds is not None,
                                                  output_dir=slot.checkpoints_dir),
                           center_rewards_coefficient=config.center_rewards_coefficient,
                           # the multi-head collator needs the "head" column the model does not take
                           **({"remove_unused_columns": False} if heads else {}))
    callbacks = [make_log_callback(run, prefix=slot.log_prefix, step_offset=slot.step_offset)]
    if not heads:
        return without_stdout_printer(RewardTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
            callbacks=callbacks))
    from trellis.reward.multihead import HeadIndexCollator, MultiHeadRewardTrainer

    return without_stdout_printer(MultiHeadRewardTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=HeadIndexCollator(pad_token_id=tokenizer.pad_token_id), callbacks=callbacks,
        margin=config.margin, center_rewards_coefficient=config.center_rewards_coefficient))


def train_model(config: RewardConfig, run: StageRun, model_dir: Path, tokenizer: Any,
                train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]],
                member: TrainingSlot | None = None, score_rows: list[dict[str, Any]] | None = None
                ) -> TrainedReward:
    """Train one reward model (one head, the heads of `config.heads`, or one separate `member`), resuming
    from its latest HF checkpoint. `score_rows` (default: the held-out rows, which give the eval loss) are
    scored before and after training."""
    from transformers import set_seed

    from trellis.device import resolve_device

    slot = member or TrainingSlot()
    set_seed(config.seed)  # the score head is freshly initialised: make it the same every run
    model = load_reward_backbone(model_dir, tokenizer.pad_token_id, slot.labels or config.heads)
    model.to(resolve_device(config.device))  # the initial held-out scoring runs where training will
    if config.likelihood_term and member is None:
        attach_term(model, tokenizer, train_rows, config.likelihood_alpha)
    spec = None if member is not None else _spec(config)
    if spec is not None:
        setattr(model.config, COMBINATION_KEY, spec)
    score_rows = heldout_rows if score_rows is None else score_rows
    initial = _score_pairs(model, score_rows, tokenizer.pad_token_id)

    trainer = make_trainer(config, run, model, tokenizer, train_rows, heldout_rows, member)
    resume = resume_point(run, slot.checkpoints_dir, slot.step_offset)
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model = trainer.model
    final = _score_pairs(model, score_rows, tokenizer.pad_token_id)
    return TrainedReward(model=model, initial_scores=initial, final_scores=final,
                         steps=int(trainer.state.global_step),
                         train_loss_final=last_logged(trainer.state.log_history, "loss"),
                         train_loss_mean=float(output.training_loss), resumed_from=str(resume) if resume else None,
                         train_runtime_s=output.metrics.get("train_runtime"),
                         train_steps_per_second=output.metrics.get("train_steps_per_second"))


def attach_term(model: Any, tokenizer: Any, rows: list[dict[str, Any]], alpha: float) -> None:
    """The likelihood term, after checking that its answer header is in the tokenized pairs."""
    from trellis.reward.likelihood import attach_likelihood_term, response_header_ids

    header = response_header_ids(tokenizer)
    sample = rows[0]["chosen_ids"]
    if not any(sample[i : i + len(header)] == header for i in range(len(sample))):
        raise TrellisError(f"reward.likelihood_term: the assistant header {tokenizer.decode(header)!r} "
                           f"(tokens {header}) is not in the tokenized pairs, so their answers cannot be found")
    attach_likelihood_term(model, header, alpha)


def _spec(config: RewardConfig) -> dict[str, Any] | None:
    return combination_spec(config.heads, config.combine) if config.heads else None


def fitted_spec(config: RewardConfig, final: PairScores, heldout_rows: list[dict[str, Any]]
                ) -> dict[str, Any] | None:
    """The combination, its constraint threshold fitted on the held-out scores when configured so."""
    constraint = config.combine.constraint
    return fit_constraint_threshold(_spec(config), constraint.threshold_quantile if constraint else None,
                                    final.chosen, heldout_rows)


def _score_pairs(model: Any, rows: list[dict[str, Any]], pad_token_id: int) -> PairScores:
    """Every reward output of each held-out pair's chosen and rejected answer."""
    return PairScores(chosen=score_token_ids(model, [r["chosen_ids"] for r in rows], pad_token_id),
                      rejected=score_token_ids(model, [r["rejected_ids"] for r in rows], pad_token_id))


def save_reward_model(run: StageRun, model: Any, tokenizer: Any) -> Path:
    from trellis.reward.likelihood import write_spec

    write_spec(model)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer_files(tmp, tokenizer)

    return save_atomic(run.final_dir, write)


def save_tokenizer_files(directory: Path, tokenizer: Any) -> None:
    """The tokenizer and a generation config, so PPO and evaluation render chats as training did."""
    from transformers import GenerationConfig

    tokenizer.save_pretrained(directory)
    GenerationConfig(eos_token_id=chat_stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id).save_pretrained(
        directory)


def diagnostics_summary(rows: list[dict[str, Any]], initial: PairScores, final: PairScores,
                        spec: dict[str, Any] | None) -> dict[str, Any]:
    """Held-out diagnostics after training, with the accuracy and mean margin before it."""
    if not rows:
        return {"accuracy": {}, "accuracy_initial": None, "margin_mean_initial": None}
    before = pair_diagnostics(initial.chosen, initial.rejected, rows, spec)
    after = pair_diagnostics(final.chosen, final.rejected, rows, spec)
    return {**after, "accuracy_initial": before["accuracy"], "margin_mean_initial": before["margin_mean"]}


def run(config: RewardConfig, world: WorldConfig, run_root: Path) -> Path:
    if config.model is None:
        raise TrellisError("reward.model: no input checkpoint (set reward.model or run the sft stage first)")
    model_dir = check_checkpoint_dir(config.model, need_tokenizer=True)
    train_pairs, heldout_pairs, dropped = load_reward_pairs(config.data, world, config.heldout_fraction, config.seed)
    if not train_pairs:
        raise TrellisError(f"reward.data: {config.data} gave no usable comparison pairs")
    if config.heads:
        _check_axes(train_pairs + heldout_pairs, config.heads, config.data)

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
        data_report = {"train_pairs": len(train_rows), "heldout_pairs": len(heldout_rows),
                       "dropped_pairs": dict(dropped), "truncated_pairs": length_counts["truncated"]}

        if config.separate_models:
            from trellis.reward.separate import train_separate_models

            final, summary = train_separate_models(config, run, model_dir, tokenizer, train_rows, heldout_rows)
        else:
            final, summary = _train_one_model(config, run, model_dir, tokenizer, train_rows, heldout_rows)
        run.write_summary({**summary, **data_report})
        return final
    finally:
        run.close()


def _train_one_model(config: RewardConfig, run: StageRun, model_dir: Path, tokenizer: Any,
                     train_rows: list[dict[str, Any]], heldout_rows: list[dict[str, Any]]
                     ) -> tuple[Path, dict[str, Any]]:
    trained = train_model(config, run, model_dir, tokenizer, train_rows, heldout_rows)
    spec = fitted_spec(config, trained.final_scores, heldout_rows)
    if spec is not None:
        setattr(trained.model.config, COMBINATION_KEY, spec)
    diagnostics = diagnostics_summary(heldout_rows, trained.initial_scores, trained.final_scores, spec)
    if heldout_rows:
        run.log(trained.steps, heldout_accuracy=diagnostics["accuracy"]["overall"],
                heldout_margin=diagnostics["margin_mean"])
    final = save_reward_model(run, trained.model, tokenizer)
    return final, {**diagnostics, "heads": spec, **trained.training_report()}
