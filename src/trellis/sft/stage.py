"""`trellis sft`: supervised fine-tuning with TRL's SFTTrainer, the loss on assistant tokens only.

With a chat template that carries `{% generation %}` markers (Trellis's ChatML) every assistant turn is
trained (assistant_only_loss). A foreign template without them falls back to prompt/completion data and
completion_only_loss, which trains the last assistant turn. Either way the answer's closing <|im_end|> is in
the loss, so the model learns to stop.

With `lora` set, peft LoRA adapters train instead of the full weights; the adapter alone is kept in
`sft/adapter/` and final/ gets the merged weights, a plain checkpoint that loads without peft.

While it trains, the stage logs the held-out eval loss every `eval_steps` and greedy answers to a few fixed
held-out prompts every `samples.every` steps (trellis.sft.samples). Examples with an empty answer are
dropped; examples over max_length are truncated or dropped (`over_length`); the summary counts both.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from trellis.checkpoint import check_checkpoint_dir, load_causal_lm, load_tokenizer
from trellis.config import SFTConfig, WorldConfig
from trellis.data.chat_template import CHATML_TEMPLATE, IM_END, IM_START, chat_stop_ids
from trellis.errors import TrellisError
from trellis.run import StageRun
from trellis.sft.data import drop_empty_answers, load_sft_examples
from trellis.sft.hf_trainer import (
    checkpoint_step,
    common_training_args,
    last_logged,
    make_log_callback,
    resume_point,
    without_stdout_printer,
)
from trellis.sft.lora import check_target_modules, export_trained, peft_lora_config
from trellis.sft.samples import make_sample_callback, sample_prompts, truncate_samples_after

log = logging.getLogger(__name__)


def prepare_tokenizer(tokenizer: Any, where: Path) -> bool:
    """Give the tokenizer a chat template if it has none; True when it marks assistant tokens."""
    if not tokenizer.chat_template:
        if IM_START in tokenizer.get_vocab() and IM_END in tokenizer.get_vocab():
            tokenizer.chat_template = CHATML_TEMPLATE
        else:
            raise TrellisError(f"{where}: tokenizer has no chat template and no ChatML tokens to build one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    return "{% generation %}" in template or "{%- generation %}" in template


def to_trainer_rows(examples: list[dict[str, Any]], assistant_masks: bool) -> list[dict[str, Any]]:
    """Rows in the TRL form the loss mask needs (see the module docstring)."""
    if assistant_masks:
        return [{"messages": ex["messages"]} for ex in examples]
    rows = []
    for ex in examples:
        msgs = ex["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        rows.append({"prompt": msgs[:last], "completion": [msgs[last]]})
    return rows


def split_examples(examples: list[dict[str, Any]], eval_fraction: float, seed: int):
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(examples) * eval_fraction)) if eval_fraction > 0 else 0
    if eval_fraction > 0 and len(examples) >= 2:
        n_eval = max(1, min(n_eval, len(examples) - 1))
    evals = [examples[i] for i in order[:n_eval]]
    train = [examples[i] for i in order[n_eval:]]
    return train, evals


def greedy_chat(model: Any, tokenizer: Any, user_texts: list[str], max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Greedy answers, one prompt at a time (no padding questions); for summaries and tests."""
    import torch

    eos = chat_stop_ids(tokenizer)
    was_training = model.training
    model.eval()
    out = []
    try:
        for text in user_texts:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
            input_ids = ids["input_ids"].to(model.device)
            with torch.no_grad():
                gen = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                     pad_token_id=tokenizer.pad_token_id)
            new = gen[0, input_ids.shape[1]:].tolist()
            out.append({"prompt": text, "response": tokenizer.decode(new, skip_special_tokens=True).strip(),
                        "stopped": bool(new) and new[-1] in eos, "tokens": len(new)})
    finally:
        model.train(was_training)
    return out


def world_gold(model: Any, tokenizer: Any, world_config: WorldConfig) -> dict[str, Any] | None:
    try:
        from trellis.data.world import World
        from trellis.eval.gold import gold_eval
        from trellis.serving.engine import Engine  # noqa: F401 - gold_eval generates through it
    except ImportError as exc:  # the world, gold scorer or engine is not built yet
        log.warning("gold score skipped: %s", exc)
        return None
    world = World(world_config)
    return gold_eval(model, tokenizer, world, world.eval_prompts(), max_new_tokens=48)


def is_over_length(tokenizer: Any, example: dict[str, Any], max_length: int) -> bool:
    """The example's chat rendering exceeds max_length tokens (TRL would cut its end, answer included)."""
    return len(tokenizer.apply_chat_template(example["messages"], tokenize=True, return_dict=True)["input_ids"]
               ) > max_length


def apply_length_limit(config: SFTConfig, tokenizer: Any, examples: list[dict[str, Any]]
                       ) -> tuple[list[dict[str, Any]], int]:
    """(the examples to train on, how many exceed max_length): kept for TRL to truncate, or dropped."""
    over = [is_over_length(tokenizer, ex, config.max_length) for ex in examples]
    if config.over_length == "drop":
        examples = [ex for ex, long in zip(examples, over, strict=True) if not long]
        if not examples:
            raise TrellisError(f"sft.max_length: every example is longer than {config.max_length} tokens "
                               "(raise max_length, or set sft.over_length: truncate)")
    return examples, sum(over)


def make_trainer(config: SFTConfig, run: StageRun, model: Any, tokenizer: Any, train_ex: list[dict[str, Any]],
                 eval_ex: list[dict[str, Any]], assistant_masks: bool, callbacks: list[Any] | None = None):
    """The TRL SFTTrainer the stage trains with (tests inspect its datasets and collator)."""
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    train_ds = Dataset.from_list(to_trainer_rows(train_ex, assistant_masks))
    eval_ds = Dataset.from_list(to_trainer_rows(eval_ex, assistant_masks)) if eval_ex else None
    args = TRLSFTConfig(
        **common_training_args(config, run, has_eval=eval_ds is not None),
        assistant_only_loss=assistant_masks,
        completion_only_loss=None if assistant_masks else True,
        packing=config.packing,
        eos_token=IM_END if IM_END in tokenizer.get_vocab() else None,
    )
    peft_config = None
    if config.lora is not None:
        check_target_modules(model, config.lora, "sft")
        peft_config = peft_lora_config(config.lora)
    return without_stdout_printer(SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                             processing_class=tokenizer,
                                             callbacks=[make_log_callback(run), *(callbacks or [])],
                                             peft_config=peft_config))


def load_examples(config: SFTConfig, world: WorldConfig) -> tuple[str, list[dict[str, Any]], int]:
    """(source format, examples, how many had an empty answer and were dropped)."""
    source, examples = load_sft_examples(config.data, world)
    if config.max_examples is not None:
        examples = examples[: config.max_examples]
    examples, empty = drop_empty_answers(examples)
    if not examples:
        raise TrellisError(f"sft.data: {config.data} gave no examples"
                           + (f" ({empty} with an empty answer were dropped)" if empty else ""))
    return source, examples, empty


def sample_callback(config: SFTConfig, run: StageRun, tokenizer: Any, world: WorldConfig,
                    eval_ex: list[dict[str, Any]]) -> Any:
    """The sample-generation callback, or None when `sft.samples` is off."""
    if config.samples is None:
        return None
    prompts = sample_prompts(config.samples.prompts, config.data, world, eval_ex)
    return make_sample_callback(run, tokenizer, prompts, config.samples.every, config.samples.max_new_tokens)


def run(config: SFTConfig, world: WorldConfig, run_root: Path) -> Path:
    if config.model is None:
        raise TrellisError("sft.model: no input checkpoint (set sft.model or run the pretrain stage first)")
    model_dir = check_checkpoint_dir(config.model, need_tokenizer=True)
    source, examples, empty_answers = load_examples(config, world)

    run = StageRun(run_root, "sft", config)
    try:
        tokenizer = load_tokenizer(model_dir)
        assistant_masks = prepare_tokenizer(tokenizer, model_dir)
        examples, over_length = apply_length_limit(config, tokenizer, examples)
        model = load_causal_lm(model_dir)
        eos = chat_stop_ids(tokenizer)
        model.generation_config.eos_token_id = eos
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.config.pad_token_id = tokenizer.pad_token_id

        train_ex, eval_ex = split_examples(examples, config.eval_fraction, config.seed)
        samples = sample_callback(config, run, tokenizer, world, eval_ex)
        trainer = make_trainer(config, run, model, tokenizer, train_ex, eval_ex, assistant_masks,
                               callbacks=[samples] if samples is not None else None)
        eval_ds = trainer.eval_dataset
        resume = resume_point(run)
        truncate_samples_after(run, checkpoint_step(resume) if resume else 0)
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        history = trainer.state.log_history
        eval_loss = None
        if eval_ds is not None:
            metrics = trainer.evaluate()  # the log callback records it
            eval_loss = float(metrics["eval_loss"])

        # final/ is a plain checkpoint: LoRA adapters are folded into the weights
        model, lora_info = export_trained(trainer.model, run)
        model.generation_config.eos_token_id = eos
        final = run.save_final_model(model, tokenizer)

        dropped = {"empty_answer": empty_answers,
                   "over_max_length": over_length if config.over_length == "drop" else 0}
        summary: dict[str, Any] = {
            "train_loss_final": last_logged(history, "loss"),
            "train_loss_mean": float(output.training_loss),
            "eval_loss_final": eval_loss,
            "steps": int(trainer.state.global_step),
            "examples": len(examples),
            "train_examples": len(train_ex),
            "eval_examples": len(eval_ex),
            "data_format": source,
            "loss_on": "assistant_tokens" if assistant_masks else "last_completion",
            "dropped_examples": {k: v for k, v in dropped.items() if v},
            "truncated_examples": over_length if config.over_length == "truncate" else 0,
            "resumed_from": str(resume) if resume else None,
            "train_runtime_s": output.metrics.get("train_runtime"),
            "train_steps_per_second": output.metrics.get("train_steps_per_second"),
            "lora": lora_info,
        }
        if config.data == "world":
            gold = world_gold(model, tokenizer, world)
            if gold is not None:
                summary["gold_score"] = gold["gold_score"]
                summary["gold"] = {k: v for k, v in gold.items() if k != "samples"}
                summary["gold_samples"] = gold.get("samples", [])
        if samples is not None:
            summary["samples"] = samples.latest
        run.write_summary(summary)
        return final
    finally:
        run.close()
