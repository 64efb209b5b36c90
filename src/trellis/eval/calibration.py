"""Calibration on multiple-choice tasks: expected calibration error and temperature scaling.

A document's confidence is the model's probability of its chosen answer, the softmax over the choices'
summed log-likelihoods (what lm-eval's `acc` ranks); ECE is the mean |accuracy - confidence| over equal-
width confidence bins, weighted by bin size. Both temperatures are fitted by minimising the negative
log-likelihood of the gold answers on a held-out split of the documents and judged on the rest:

  token temperature   the T that divides the model's logits at every token (softmax(z / T), what a sampler
                      applies): each choice is rescored at every T of TOKEN_TEMPERATURES while the task
                      runs. This is the T written into a checkpoint's generation_config.json, serving's
                      default sampling temperature (setup D's "temperature scaling at inference").
  choice temperature  the T that divides the choices' summed log-likelihoods (Guo et al.'s scaling of a
                      classifier's scores). It rescales a whole answer's probability, not a token's, so it
                      is reported as a diagnostic only: summed over tens of tokens the log-likelihoods
                      of a small model's choices are far apart, and this T is often large (~100).
A fit that lands on the edge of its range is reported (`*_at_limit`) rather than taken as an optimum.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

Item = tuple[list[float], int]  # (log-likelihood per choice, gold index)
GridItem = tuple[list[list[float]], int]  # (per choice, its log-likelihood at each token temperature; gold)
T_RANGE = (0.01, 1000.0)
# token temperatures each choice is rescored at: 2^(k/4), 0.25 .. 4 in steps of 19%, with 1.0 exactly on
# the grid (each point costs an exp over the vocabulary at every scored position: with the samples kept
# for calibration, a 100-document HellaSwag run of SmolLM2 on CPU takes 1.56x the CPU time of a plain one)
TOKEN_TEMPERATURES = tuple(2.0 ** (k / 4) for k in range(-8, 9))


def items_from_samples(samples: list[dict[str, Any]]) -> list[Item]:
    """lm-eval's logged samples of a multiple-choice task (log_samples=True) -> (choice scores, gold)."""
    return [([float(r[0]) for r in sample["filtered_resps"]], sample["target"]) for sample in _usable(samples)]


def _probs(scores: list[float], temperature: float) -> list[float]:
    top = max(scores)
    exps = [math.exp((s - top) / temperature) for s in scores]
    total = sum(exps)
    return [e / total for e in exps]


def expected_calibration_error(items: list[Item], temperature: float = 1.0, bins: int = 10) -> float:
    if not items:
        raise TrellisError("calibration: no multiple-choice documents to measure")
    counts = [0] * bins
    conf_sum = [0.0] * bins
    correct = [0] * bins
    for scores, gold in items:
        probs = _probs(scores, temperature)
        choice = max(range(len(probs)), key=probs.__getitem__)
        b = min(int(probs[choice] * bins), bins - 1)
        counts[b] += 1
        conf_sum[b] += probs[choice]
        correct[b] += int(choice == gold)
    return sum(abs(correct[b] - conf_sum[b]) for b in range(bins) if counts[b]) / len(items)


def nll(items: list[Item], temperature: float) -> float:
    """Mean negative log-probability of the gold answers under softmax(scores / T)."""
    total = 0.0
    for scores, gold in items:
        scaled = [s / temperature for s in scores]
        top = max(scaled)
        total += top + math.log(sum(math.exp(s - top) for s in scaled)) - scaled[gold]
    return total / len(items)


def fit_temperature(items: list[Item], iterations: int = 80) -> float:
    """The T in T_RANGE with the least NLL (golden-section search on log T; NLL is unimodal in it)."""
    if not items:
        raise TrellisError("calibration: no held-out documents to fit a temperature on")
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(items, math.exp(a)), nll(items, math.exp(b))
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(items, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(items, math.exp(b))
    return math.exp((lo + hi) / 2)


def split(items: list[Item], fit_fraction: float = 0.5, seed: int = 0) -> tuple[list[Item], list[Item]]:
    """(fit, held-out) halves in a seeded random order, so neither half is one end of the data."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = int(len(order) * fit_fraction)
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def at_grid(items: list[GridItem], index: int) -> list[Item]:
    """The (choice scores, gold) items of grid items at one token temperature of the grid."""
    return [([choice[index] for choice in grid], gold) for grid, gold in items]


def fit_token_temperature(items: list[GridItem], grid: tuple[float, ...] | None = None) -> tuple[int, list[float]]:
    """(index in `grid` (default TOKEN_TEMPERATURES) of the token temperature with the least gold NLL,
    NLL at every grid point)."""
    grid = TOKEN_TEMPERATURES if grid is None else grid
    if not items:
        raise TrellisError("calibration: no held-out documents to fit a token temperature on")
    curve = [nll(at_grid(items, j), 1.0) for j in range(len(grid))]
    return min(range(len(grid)), key=curve.__getitem__), curve


def _judged(items: list[Item], temperature: float = 1.0) -> dict[str, float]:
    return {"ece": expected_calibration_error(items, temperature), "nll": nll(items, temperature)}


def calibrate(items_by_task: dict[str, list[Item]], grid_by_task: dict[str, list[GridItem]] | None = None,
              grid: tuple[float, ...] | None = None, fit_fraction: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Temperatures fitted on the pooled fit halves of every task; ECE and NLL on each held-out half.

    Returns {"choice_temperature", "choice_temperature_at_limit", "fit_documents",
    "temperature" (token-level; with grid items only), "temperature_at_limit", "nll_by_temperature",
    "<task>" and "all" (every held-out document): {"n", "ece", "nll" (as scored), "ece_choice_scaled",
    "nll_choice_scaled", "ece_scaled", "nll_scaled" (at the token temperature)}}.
    A task's grid items must be its items in the same order (the same documents fall in each half), scored
    at `grid` (default TOKEN_TEMPERATURES).
    """
    grid = TOKEN_TEMPERATURES if grid is None else grid
    fit_items: list[Item] = []
    held: dict[str, list[Item]] = {}
    fit_grid: list[GridItem] = []
    held_grid: dict[str, list[GridItem]] = {}
    for task, items in items_by_task.items():
        fit_part, held[task] = split(items, fit_fraction, seed)
        fit_items += fit_part
        if grid_by_task is not None:
            if len(grid_by_task.get(task, [])) != len(items):
                raise TrellisError(f"calibration: task {task} has {len(items)} documents but "
                                   f"{len(grid_by_task.get(task, []))} rescored at the token temperatures")
            fit_part_grid, held_grid[task] = split(grid_by_task[task], fit_fraction, seed)
            fit_grid += fit_part_grid
    choice_t = fit_temperature(fit_items)
    out: dict[str, Any] = {"choice_temperature": choice_t, "fit_documents": len(fit_items),
                           "choice_temperature_at_limit": _at_limit(choice_t, T_RANGE)}
    best = None
    if grid_by_task is not None:
        best, curve = fit_token_temperature(fit_grid, grid)
        out.update(temperature=grid[best], temperature_at_limit=best in (0, len(grid) - 1),
                   nll_by_temperature={f"{t:.4g}": v for t, v in zip(grid, curve, strict=True)})
        held_grid["all"] = [item for items in held_grid.values() for item in items]
    held["all"] = [item for items in held.values() for item in items]
    for task, items in held.items():
        if not items:
            continue
        entry: dict[str, Any] = {"n": len(items), **_judged(items)}
        scaled = _judged(items, choice_t)
        entry.update(ece_choice_scaled=scaled["ece"], nll_choice_scaled=scaled["nll"])
        if best is not None:
            token_scaled = _judged(at_grid(held_grid[task], best))
            entry.update(ece_scaled=token_scaled["ece"], nll_scaled=token_scaled["nll"])
        out[task] = entry
    return out


def _at_limit(value: float, bounds: tuple[float, float], rel: float = 1e-3) -> bool:
    return abs(math.log(value / bounds[0])) < rel or abs(math.log(value / bounds[1])) < rel


def write_temperature(checkpoint: str | Path, temperature: float) -> Path:
    """Set `temperature` in the checkpoint's generation_config.json (other keys kept), atomically."""
    path = Path(checkpoint) / "generation_config.json"
    try:
        config = json.loads(path.read_text()) if path.exists() else {}
    except json.JSONDecodeError as exc:
        raise TrellisError(f"{path}: not valid JSON ({exc.msg}); cannot record the calibrated temperature") from None
    config["temperature"] = round(float(temperature), 6)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(path)
    return path


def calibration_items(results: dict[str, Any], samples: dict[str, list], tasks: list[str]) -> dict[str, list]:
    """Each requested task's lm-eval samples whose documents calibration can use, a group's subtasks pooled
    under the group; only single-answer multiple-choice tasks (the default metric: truthfulqa_mc2 and the
    like are left out). Turn them into items with items_from_samples / grid_items_from_samples."""
    owner = {}
    for group, subtasks in results.get("group_subtasks", {}).items():
        if group in tasks:
            owner.update({sub: group for sub in subtasks})
    out: dict[str, list] = {}
    for task, task_samples in samples.items():
        cfg = results.get("configs", {}).get(task, {})
        if cfg.get("output_type") != "multiple_choice" or cfg.get("process_results"):
            continue
        out.setdefault(owner.get(task, task), []).extend(_usable(task_samples))
    return {task: rows for task, rows in out.items() if rows}


def _usable(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Samples with one gold index among their choices."""
    return [s for s in samples if isinstance(s.get("target"), int) and 0 <= s["target"] < len(s["filtered_resps"])]


def grid_items_from_samples(samples: list[dict[str, Any]], tempered: dict[tuple[str, str], list[float]]) -> list[GridItem]:
    """Samples -> (per choice, its log-likelihoods at the token temperatures; gold), looked up by each
    request's (context, continuation) in what TrellisLM recorded (`tempered_loglikelihoods`)."""
    items = []
    for sample in _usable(samples):
        try:
            grid = [tempered[tuple(args)] for args in sample["arguments"]]
        except KeyError:
            raise TrellisError(f"calibration: document {sample.get('doc_id')} was not rescored at the token "
                               "temperatures (TrellisLM.score_temperatures unset, or answers from a cache)") from None
        items.append((grid, sample["target"]))
    return items
