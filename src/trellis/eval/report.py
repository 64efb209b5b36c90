"""The eval stage's report across models (base -> SFT -> RLHF, checkpoint-averaged against last): one row
per task/metric, one column per model, then the deltas between stages (the alignment tax is the drop of
a capability benchmark from base to the aligned models), in markdown and HTML with a bar chart per row."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

# summary sections that are not lm-eval tasks: each has its own rows
NON_TASK_SECTIONS = {"perplexity", "gold", "calibration", "red_team", "win_rate"}
# a model named <name><suffix> is a variant of <name> (pretraining's averaged or EMA weights)
VARIANT_SUFFIXES = ("_averaged", "_average", "_ema")

GOLD_METRICS = ("gold_score", "helpfulness", "harmlessness", "honesty")
PPL_METRICS = ("ppl", "bits_per_byte")
# higher is better everywhere except these, which the report marks so a reader knows which way is good
LOWER_IS_BETTER = {"ppl", "bits_per_byte"}


def report_rows(summary: dict[str, dict[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    """(section, metric, value per model) rows in a stable order: tasks, then perplexity, then gold."""
    models = list(summary)
    rows: list[tuple[str, str, list[Any]]] = []
    tasks: list[str] = []
    for per_model in summary.values():
        tasks += [t for t in per_model if t not in NON_TASK_SECTIONS and t not in tasks]
    for task in tasks:
        metrics: list[str] = []
        for name in models:
            metrics += [m for m in summary[name].get(task, {}) if m not in metrics]
        for metric in metrics:
            rows.append((task, metric, [summary[name].get(task, {}).get(metric) for name in models]))
    sets: list[str] = []
    for name in models:
        sets += [s for s in summary[name].get("perplexity", {}) if s not in sets]
    for text_set in sets:
        for metric in PPL_METRICS:
            rows.append((f"perplexity/{text_set}", metric,
                         [summary[name].get("perplexity", {}).get(text_set, {}).get(metric) for name in models]))
    if any(summary[name].get("gold") for name in models):
        for metric in GOLD_METRICS:
            rows.append(("gold", metric, [(summary[name].get("gold") or {}).get(metric) for name in models]))
    if any(summary[name].get("calibration") for name in models):
        for metric in ("ece", "ece_scaled"):
            rows.append(("calibration/all", metric,
                         [((summary[name].get("calibration") or {}).get("all") or {}).get(metric) for name in models]))
        rows.append(("calibration", "temperature",
                     [(summary[name].get("calibration") or {}).get("temperature") for name in models]))
    red = {name: summary[name].get("red_team") or {} for name in models}
    for source in sorted({k for r in red.values() for k, v in r.items() if isinstance(v, dict)}):
        rows.append((f"red_team/{source}", "reward_mean", [(red[m].get(source) or {}).get("reward_mean") for m in models]))
        if any("gold" in (red[m].get(source) or {}) for m in models):
            for metric in ("harmlessness", "gold_score"):
                rows.append((f"red_team/{source}", f"gold_{metric}" if metric != "gold_score" else metric,
                             [((red[m].get(source) or {}).get("gold") or {}).get(metric) for m in models]))
    rates = {name: summary[name].get("win_rate") or {} for name in models}
    for versus in sorted({k for r in rates.values() for k in r}):
        rows.append((f"win_rate/{versus}", "win_rate", [(rates[m].get(versus) or {}).get("win_rate") for m in models]))
    return rows


def delta_pairs(models: list[str]) -> list[tuple[str, str]]:
    """(from, to) model pairs to difference: each stage against the one before it (in the order given,
    variants aside), first against last when there are three or more stages, and every averaged/EMA
    variant against its plain model."""
    variants = {m: base for m in models for suffix in VARIANT_SUFFIXES
                if m.endswith(suffix) and (base := m[: -len(suffix)]) in models}
    stages = [m for m in models if m not in variants]
    pairs = list(zip(stages, stages[1:], strict=False))
    if len(stages) >= 3:
        pairs.append((stages[0], stages[-1]))
    pairs += [(base, variant) for variant, base in variants.items()]
    return pairs


def _delta(values: dict[str, Any], a: str, b: str) -> float | None:
    va, vb = values.get(a), values.get(b)
    return vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None


def comparison_table(summary: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """(header, rows of cells) with a column per model and per delta pair; None cells are dashes."""
    models = list(summary)
    pairs = delta_pairs(models)
    header = ["task", "metric", *models, *[f"Δ {b} − {a}" for a, b in pairs]]
    out = []
    for section, metric, values in report_rows(summary):
        by_model = dict(zip(models, values, strict=True))
        deltas = [_delta(by_model, a, b) for a, b in pairs]
        label = f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric
        out.append([section, label, *[_fmt(v) for v in values],
                    *["–" if d is None else f"{d:+.4f}" for d in deltas]])
    return header, out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def markdown_report(summary: dict[str, dict[str, Any]], title: str = "Evaluation",
                    plot: str | None = None) -> str:
    """A markdown table comparing models (the best value of each row in bold) with the stage deltas."""
    models = list(summary)
    header, rows = comparison_table(summary)
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for (_, metric, values), cells in zip(report_rows(summary), rows, strict=True):
        numbers = [v for v in values if isinstance(v, int | float)]
        best = None
        if len(models) > 1 and len(numbers) > 1:
            best = min(numbers) if metric in LOWER_IS_BETTER else max(numbers)
        cells[2:2 + len(models)] = [f"**{_fmt(v)}**" if best is not None and v == best else _fmt(v) for v in values]
        lines.append("| " + " | ".join(cells) + " |")
    if plot:
        lines += ["", f"![metrics by model]({plot})"]
    return "\n".join(lines) + "\n"


def html_report(summary: dict[str, dict[str, Any]], title: str = "Evaluation", plot: str | None = None) -> str:
    """The markdown report's table as a standalone HTML page."""
    header, rows = comparison_table(summary)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    img = f'<p><img src="{esc(plot)}" alt="metrics by model"></p>' if plot else ""
    style = ("body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:2px 8px}td:nth-child(n+3){text-align:right}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title><style>{style}"
            f"</style></head><body><h1>{esc(title)}</h1><table><tr>{head}</tr>\n{body}</table>{img}</body></html>\n")


def plot_report(summary: dict[str, dict[str, Any]], out: Path, max_rows: int = 24) -> Path | None:
    """A bar chart per task/metric row (models side by side) in one PNG; None when nothing is numeric."""
    models = list(summary)
    rows = [(s, m, v) for s, m, v in report_rows(summary) if any(isinstance(x, int | float) for x in v)][:max_rows]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(rows))
    n_rows = -(-len(rows) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 2.6 * n_rows), squeeze=False)
    for ax, (section, metric, values) in zip(axes.flat, rows, strict=False):
        ax.bar(range(len(models)), [v if isinstance(v, int | float) else 0.0 for v in values])
        ax.set_xticks(range(len(models)), models, rotation=30, fontsize=7)
        ax.set_title(f"{section}\n{metric}", fontsize=8)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def write_reports(summary: dict[str, dict[str, Any]], out_dir: Path, title: str = "Evaluation") -> dict[str, Path]:
    """report.md, report.html and report_metrics.png in `out_dir`."""
    plot = plot_report(summary, out_dir / "report_metrics.png")
    name = plot.name if plot else None
    (out_dir / "report.md").write_text(markdown_report(summary, title=title, plot=name))
    (out_dir / "report.html").write_text(html_report(summary, title=title, plot=name))
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html"}
    if plot:
        paths["plot"] = plot
    return paths
