"""Calibration on multiple-choice tasks: expected calibration error and temperature scaling.

A document's confidence is the model's probability of its chosen answer, the softmax over the choices'
summed log-likelihoods (what lm-eval's `acc` ranks); ECE is the mean |accuracy - confidence| over equal-
width confidence bins, weighted by bin size. Temperature scaling divides those log-likelihoods by one T,
fitted by minimising the negative log-likelihood of the gold answers on a held-out split of the documents
and judged on the rest. T is written as the `temperature` of a checkpoint's generation_config.json, the
default a Trellis server samples with (a sequence-level T used per token: the usual approximation).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

Item = tuple[list[float], int]  # (log-likelihood per choice, gold index)
T_RANGE = (0.05, 20.0)


def items_from_samples(samples: list[dict[str, Any]]) -> list[Item]:
    """lm-eval's logged samples of a multiple-choice task (log_samples=True) -> (choice scores, gold)."""
    items = []
    for sample in samples:
        target = sample.get("target")
        scores = [float(r[0]) for r in sample["filtered_resps"]]
        if isinstance(target, int) and 0 <= target < len(scores):
            items.append((scores, target))
    return items


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


def calibrate(items_by_task: dict[str, list[Item]], fit_fraction: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """One T fitted on the pooled fit halves of every task; ECE and NLL before/after on each held-out half.

    Returns {"temperature", "fit_documents", "<task>": {"n", "ece", "ece_scaled", "nll", "nll_scaled"},
    "all": {...} (every held-out document)}.
    """
    fit_items: list[Item] = []
    held: dict[str, list[Item]] = {}
    for task, items in items_by_task.items():
        fit_part, held[task] = split(items, fit_fraction, seed)
        fit_items += fit_part
    temperature = fit_temperature(fit_items)
    out: dict[str, Any] = {"temperature": temperature, "fit_documents": len(fit_items)}
    held["all"] = [item for items in held.values() for item in items]
    for task, items in held.items():
        if items:
            out[task] = {"n": len(items), "ece": expected_calibration_error(items),
                         "ece_scaled": expected_calibration_error(items, temperature),
                         "nll": nll(items, 1.0), "nll_scaled": nll(items, temperature)}
    return out


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
    """Each requested task's (choice scores, gold) items, a group's subtasks pooled under the group;
    only single-answer multiple-choice tasks (the default metric: truthfulqa_mc2 and the like are left out)."""
    owner = {}
    for group, subtasks in results.get("group_subtasks", {}).items():
        if group in tasks:
            owner.update({sub: group for sub in subtasks})
    out: dict[str, list] = {}
    for task, task_samples in samples.items():
        cfg = results.get("configs", {}).get(task, {})
        if cfg.get("output_type") != "multiple_choice" or cfg.get("process_results"):
            continue
        out.setdefault(owner.get(task, task), []).extend(items_from_samples(task_samples))
    return {task: items for task, items in out.items() if items}
