"""The eval stage's markdown report: one row per task/metric, one column per model."""

from __future__ import annotations

from typing import Any

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
        tasks += [t for t in per_model if t not in ("perplexity", "gold") and t not in tasks]
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
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def markdown_report(summary: dict[str, dict[str, Any]], title: str = "Evaluation") -> str:
    """A markdown table comparing models; the best value of each row is in bold."""
    models = list(summary)
    lines = [f"# {title}", "", "| task | metric | " + " | ".join(models) + " |",
             "|---|---|" + "---:|" * len(models)]
    for section, metric, values in report_rows(summary):
        numbers = [v for v in values if isinstance(v, int | float)]
        best = None
        if len(models) > 1 and len(numbers) > 1:
            best = min(numbers) if metric in LOWER_IS_BETTER else max(numbers)
        cells = [f"**{_fmt(v)}**" if best is not None and v == best else _fmt(v) for v in values]
        label = f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric
        lines.append(f"| {section} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
