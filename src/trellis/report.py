"""The pipeline's report card: runs/<name>/report.md with the key numbers and a PNG of each stage's curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trellis.run import flatten, read_metrics

# the curves worth a glance per stage, in plotting order; missing keys are skipped
CURVES: dict[str, list[str]] = {
    "pretrain": ["loss", "val_ppl", "lr", "grad_norm"],
    "sft": ["loss", "eval_loss", "learning_rate", "grad_norm"],
    "reward": ["loss", "accuracy", "eval_loss", "eval_accuracy", "margin"],
    "rlhf": ["reward_mean", "kl_mean", "gold_score", "entropy", "response_length"],
}


# counts and sizes, not scores: left out of the comparison table
_COUNT_KEYS = {"n", "tokens", "bytes", "documents", "wall_seconds"}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def plot_stage(run_root: Path, stage: str) -> Path | None:
    records = read_metrics(run_root / stage / "metrics.jsonl")
    keys = [k for k in CURVES.get(stage, []) if any(isinstance(r.get(k), float | int) for r in records)]
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float | int)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None)
        ax.set_title(f"{stage}: {key}")
        ax.set_xlabel("step")
        if key in ("val_ppl",) and points and max(p[1] for p in points) / max(min(p[1] for p in points), 1e-9) > 50:
            ax.set_yscale("log")
    fig.tight_layout()
    out = run_root / f"{stage}_curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _eval_table(eval_summary: dict[str, Any]) -> list[str]:
    """Rows `task / metric` (nested sections such as perplexity.<set>.ppl flattened), columns models."""
    models = [m for m, v in eval_summary.items() if isinstance(v, dict)]
    rows: dict[str, dict[str, Any]] = {}
    for model in models:
        for name, value in flatten("", eval_summary[model]).items():
            if ".by_kind." in name or name.rpartition(".")[2] in _COUNT_KEYS:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                task, _, metric = name.rpartition(".")
                rows.setdefault(f"{task} / {metric}", {})[model] = value
    if not rows:
        return []
    lines = ["| task / metric | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(m)) for m in models) + " |")
    return lines


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text or "(empty)").splitlines()) or "> (empty)"


def _answer(record: dict[str, Any]) -> str:
    """A sample's answer as a quote, with its reward when the stage scored it and a mark when cut off."""
    notes = [f"reward {_fmt(record['reward'])}"] if isinstance(record.get("reward"), float | int) else []
    notes += [f"{k.removeprefix('reward_')} {_fmt(v)}" for k, v in record.items()
              if k.startswith("reward_") and isinstance(v, float | int)]
    if record.get("stopped") is False:
        notes.append("cut at max_new_tokens")
    return _quote(str(record.get("answer", ""))) + (f"\n\n*({', '.join(notes)})*" if notes else "")


def _samples_section(summary: dict[str, Any]) -> list[str]:
    """Greedy samples: each stage's last ones (SFT), and before / after side by side per prompt (RLHF)."""
    lines: list[str] = []
    for stage in summary.get("stages", []):
        s = summary.get(stage) or {}
        initial, final = s.get("samples_initial") or [], s.get("samples_final") or s.get("samples") or []
        if not final:
            continue
        before = {r["prompt"]: r for r in initial if r.get("step") != final[0].get("step")}
        lines += [f"### {stage} (step {final[0].get('step')})" + (", against step 0" if before else ""), ""]
        for record in final:
            # a prompt may span paragraphs, which bold markers cannot
            lines += ["**Prompt:**", "", _quote(str(record["prompt"])), ""]
            if record["prompt"] in before:
                lines += ["**Before:**", "", _answer(before[record["prompt"]]), "", "**After:**", ""]
            else:
                lines += ["**Answer:**", ""]
            lines += [_answer(record), ""]
    return ["## Samples", "", *lines] if lines else []


def write_report(run_root: Path, summary: dict[str, Any]) -> Path:
    lines = [f"# Trellis run `{summary.get('name')}`", "", f"Run directory: `{run_root}`", ""]
    lines += ["## Stages", "", "| stage | wall seconds | key results |", "|---|---|---|"]
    key_results = {
        "pretrain": ["val_ppl_initial", "val_ppl_final"],
        "sft": ["gold_score", "eval_loss_final"],
        "reward": ["accuracy"],
        "rlhf": ["reward_mean_initial", "reward_mean_final", "kl_final", "gold_score"],
    }
    for stage in summary.get("stages", []):
        s = summary.get(stage) or {}
        parts = []
        for key in key_results.get(stage, []):
            value = s.get(key)
            if isinstance(value, dict):
                parts.append(", ".join(f"{key}.{k}={_fmt(v)}" for k, v in value.items()))
            elif value is not None:
                parts.append(f"{key}={_fmt(value)}")
        lines.append(f"| {stage} | {_fmt(s.get('wall_seconds'))} | {'; '.join(parts)} |")
    lines.append("")
    if isinstance(summary.get("eval"), dict):
        table = _eval_table({k: v for k, v in summary["eval"].items() if k not in ("status", "wall_seconds")})
        if table:
            lines += ["## Evaluation", "", *table, ""]
        # the eval stage's own report has the stage deltas (alignment tax) and its plots
        links = [f"[{name}](eval/{name})" for name in ("report.md", "report.html") if (run_root / "eval" / name).exists()]
        if links:
            lines += ["Deltas between stages and plots: " + ", ".join(links), ""]
    lines += _samples_section(summary)
    plots = [p for p in (plot_stage(run_root, s) for s in summary.get("stages", [])) if p is not None]
    if plots:
        lines += ["## Curves", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    path = run_root / "report.md"
    path.write_text("\n".join(lines))
    return path
