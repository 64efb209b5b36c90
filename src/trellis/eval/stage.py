"""`trellis eval`: lm-eval task mirrors, held-out perplexity and gold scores for each model, compared.

Writes `run_root/eval/`:
    world_data/           World.write's files, the data of the world_* task mirrors (source: world)
    tasks/                the mirrors' YAML for lm-eval's TaskManager (and their data in lm-eval's schemas);
                          absent with source: hub, which runs lm-eval's official tasks
    results/<model>.json  lm-eval's results JSON, plus "perplexity", "gold" (with samples) and "timing"
    summary.json          {"<model>": {"<task>": {"<metric>": v}, "perplexity": {...}, "gold": {...}}}
    report.md, .html      rows task/metric, columns models and the deltas between stages; report_metrics.png
A model whose results/<model>.json was written under the same config and checkpoint is not evaluated
again when an interrupted stage is rerun.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from trellis.config import EvalConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.run import StageRun, flatten

log = logging.getLogger(__name__)
WORLD_SET = "world"


def _check_inputs(config: EvalConfig) -> None:
    from trellis.checkpoint import check_checkpoint_dir

    if not config.models:
        raise TrellisError("eval.models: no models to evaluate (name -> checkpoint directory)")
    for name, path in config.models.items():
        if not name or "/" in name:
            raise TrellisError(f"eval.models: model name {name!r} must be non-empty and have no '/'")
        check_checkpoint_dir(path, need_tokenizer=True)
    if config.reward_model:
        check_checkpoint_dir(config.reward_model, need_tokenizer=True)
    if config.alignment_prompts_file and not Path(config.alignment_prompts_file).is_file():
        raise TrellisError(f"eval.alignment_prompts_file: {config.alignment_prompts_file} is not a file (a json/jsonl "
                           "prompts or comparison-pairs file)")
    if config.red_team_hh and not Path(config.red_team_hh).is_file():
        raise TrellisError(f"eval.red_team_hh: {config.red_team_hh} is not a file (an hh-rlhf jsonl[.gz])")
    if config.source == "local" and not Path(str(config.data_dir)).is_dir():
        raise TrellisError(f"eval.data_dir: {config.data_dir} is not a directory (the benchmark files of source 'local')")
    for name, source in config.perplexity.items():
        if source != WORLD_SET and not Path(source).is_file():
            raise TrellisError(f"eval.perplexity.{name}: {source} is not a text file (or 'world')")


def _fingerprint(config: EvalConfig, world: WorldConfig, checkpoint: str) -> dict[str, Any]:
    """What a model's saved results depend on; a rerun reuses them only when this is unchanged."""
    cfg = config.model_dump(exclude={"models", "device", "batch_size"})
    ckpt = Path(checkpoint)
    weights = [p for p in ckpt.glob("model*.safetensors")] + [ckpt / "config.json"]
    stamp = max((p.stat().st_mtime for p in weights if p.exists()), default=0.0)
    return {"config": cfg, "world": world.model_dump(), "checkpoint": str(ckpt.resolve()), "mtime": stamp}


def _load_done(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    trellis = saved.get("trellis", {})
    if trellis.get("fingerprint") != json.loads(json.dumps(fingerprint)):
        return None
    return trellis.get("summary")


def _scalars(entry: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a summary entry, for metrics.jsonl and TensorBoard."""
    out = {}
    for key, value in flatten("", entry).items():
        if not isinstance(value, int | float) or isinstance(value, bool) or ".by_kind." in key \
                or ".nll_by_temperature." in key:
            continue
        if key.startswith("perplexity.") and not key.endswith((".ppl", ".bits_per_byte")):
            continue
        out[key] = float(value)
    return out


def _calibration(config: EvalConfig, checkpoint: str, results: dict[str, Any], samples: dict[str, list],
                 tasks: list[str], tempered: dict[tuple[str, str], list[float]]) -> dict[str, Any]:
    """ECE and the fitted temperatures of the multiple-choice tasks; the token temperature written into the
    checkpoint's generation config when asked and when the fit is an optimum inside the grid."""
    from trellis.eval.calibration import (
        calibrate,
        calibration_items,
        grid_items_from_samples,
        items_from_samples,
        write_temperature,
    )

    usable = calibration_items(results, samples, tasks)
    out = calibrate({task: items_from_samples(rows) for task, rows in usable.items()},
                    {task: grid_items_from_samples(rows, tempered) for task, rows in usable.items()})
    if out["temperature_at_limit"]:
        log.warning("calibration: the token temperature %.3g sits at the edge of the fitted range (not an optimum%s)",
                    out["temperature"], f"; not written into {checkpoint}" if config.write_temperature else "")
    if config.write_temperature:
        out["temperature_written"] = (not out["temperature_at_limit"]
                                      and str(write_temperature(checkpoint, out["temperature"])))
    return out


def evaluate_model(name: str, checkpoint: str, config: EvalConfig, world_obj: Any, task_dir: Path | None,
                   text_sets: dict[str, Any], judge: tuple[Any, Any] | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary entry, full results JSON) of one model."""
    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.device import resolve_device
    from trellis.eval.gold import gold_eval
    from trellis.eval.lm_model import TrellisLM
    from trellis.eval.perplexity import perplexity_sets
    from trellis.eval.tasks import metrics_table, run_lm_eval

    model = load_causal_lm(checkpoint, device=resolve_device(config.device))
    tokenizer = load_tokenizer(checkpoint)
    timing: dict[str, float] = {}
    entry: dict[str, Any] = {}
    results: dict[str, Any] = {}
    tasks = config.task_names()
    if tasks:
        t0 = time.time()
        lm = TrellisLM(model=model, tokenizer=tokenizer, batch_size=config.batch_size,
                       max_gen_toks=config.max_new_tokens)
        if config.calibration:
            from trellis.eval.calibration import TOKEN_TEMPERATURES

            lm.score_temperatures = TOKEN_TEMPERATURES
        results = run_lm_eval(lm, tasks, task_dir, limit=config.limit, num_fewshot=config.num_fewshot,
                              fewshot=config.fewshot, log_samples=config.calibration)
        samples = results.pop("samples", None)
        entry.update(metrics_table(results, tasks))
        if config.calibration:
            entry["calibration"] = _calibration(config, checkpoint, results, samples or {}, tasks,
                                                lm.tempered_loglikelihoods)
        timing["tasks_seconds"] = time.time() - t0
        timing["tasks_requests"] = float(sum(v.get("effective", 0) for v in results.get("n-samples", {}).values()))
    if text_sets:
        t0 = time.time()
        ppl = perplexity_sets(model, tokenizer, text_sets, max_length=config.perplexity_window,
                              batch_tokens=config.perplexity_batch_tokens)
        entry["perplexity"] = ppl
        timing["perplexity_seconds"] = time.time() - t0
        timing["perplexity_tokens_per_second"] = sum(r["tokens"] for r in ppl.values()) / max(
            timing["perplexity_seconds"], 1e-9)
    gold_full = None
    if config.gold and world_obj is not None:
        t0 = time.time()
        prompts = world_obj.eval_prompts()[: config.gold_prompts]
        gold_full = gold_eval(model, tokenizer, world_obj, prompts, max_new_tokens=config.max_new_tokens,
                              batch_size=config.batch_size)
        entry["gold"] = {k: v for k, v in gold_full.items() if k != "samples"}
        timing["gold_seconds"] = time.time() - t0
        timing["gold_prompts_per_second"] = len(prompts) / max(timing["gold_seconds"], 1e-9)
    if judge is not None:
        from trellis.eval.alignment import alignment_eval

        t0 = time.time()
        red_team, results["alignment"] = alignment_eval(model, tokenizer, config, world_obj, judge)
        if red_team:
            entry["red_team"] = red_team
        timing["alignment_seconds"] = time.time() - t0
    results["perplexity"] = entry.get("perplexity", {})
    results["gold"] = gold_full
    results["timing"] = {k: round(v, 3) for k, v in timing.items()}
    del model
    return entry, results


def run(config: EvalConfig, world: WorldConfig, run_root: Path) -> Path:
    from lm_eval.utils import handle_non_serializable

    from trellis.eval.report import write_reports
    from trellis.eval.tasks import TaskData, check_task_names, write_task_dir

    _check_inputs(config)
    run = StageRun(run_root, "eval", config)
    results_dir = run.dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)

    tasks = config.task_names()
    world_tasks = bool(tasks) and config.source == "world"
    # a reward model's win-rate prompts and red-team set come from the world unless a prompts file is given
    # (real models: the world's prompts about its fictional entities mean nothing to them)
    needs_world = (world_tasks or config.gold or WORLD_SET in config.perplexity.values()
                   or (config.reward_model is not None and not config.alignment_prompts_file))
    world_obj = None
    task_dir = None
    if needs_world:
        from trellis.data.world import World

        world_obj = World(world)
    if tasks and config.source != "hub":
        if world_tasks:
            data, prefix = TaskData.from_world_files(world_obj.write(run.dir / "world_data")), "world"
        else:
            data, prefix = TaskData.find(str(config.data_dir)), ""
        task_dir = run.dir / "tasks"
        available = write_task_dir(data, task_dir, prefix=prefix, fewshot=config.fewshot,
                                   subsample=config.subsample)
        found = "" if world_tasks else f"found under {config.data_dir}: {data.describe()}"
        check_task_names(tasks, available, found=found)
        for task in config.fewshot:
            check_task_names([task], available, where="eval.fewshot")
    text_sets: dict[str, Any] = {}
    for name, source in config.perplexity.items():
        text_sets[name] = world_obj.corpus("val") if source == WORLD_SET else Path(source)

    judge = None
    if config.reward_model:
        from trellis.checkpoint import load_reward_model, load_tokenizer
        from trellis.device import resolve_device

        judge = (load_reward_model(config.reward_model, device=resolve_device(config.device)).eval(),
                 load_tokenizer(config.reward_model))
    summary: dict[str, Any] = {}
    bar = run.progress(total=len(config.models), desc="eval models")
    try:
        for step, (name, checkpoint) in enumerate(config.models.items()):
            bar.set_postfix_str(name)
            out = results_dir / f"{name}.json"
            fingerprint = _fingerprint(config, world, checkpoint)
            entry = _load_done(out, fingerprint)
            if entry is None:
                t0 = time.time()
                entry, results = evaluate_model(name, checkpoint, config, world_obj, task_dir, text_sets, judge)
                results["trellis"] = {"model": name, "checkpoint": checkpoint, "fingerprint": fingerprint,
                                      "summary": entry, "seconds": round(time.time() - t0, 2)}
                out.write_text(json.dumps(results, indent=2, default=handle_non_serializable))
                run.log(step, model=name, seconds=round(time.time() - t0, 2), **_scalars(entry))
            else:
                log.info("eval: %s already evaluated under this config (%s)", name, out)
            summary[name] = entry
            run.write_summary(summary, done=False)
            bar.update(1)
    finally:
        bar.close()
        run.close()
    if judge is not None:
        from trellis.eval.alignment import win_rates

        for name, rates in win_rates(results_dir, list(config.models)).items():
            summary[name]["win_rate"] = rates
    write_reports(summary, run.dir, title=f"Evaluation ({run_root.name})")
    run.write_summary(summary)
    return run.dir
