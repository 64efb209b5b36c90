from trellis.eval.report import delta_pairs, write_reports

SUMMARY = {
    "base": {"mmlu": {"acc": 0.30}, "perplexity": {"val": {"ppl": 10.0, "bits_per_byte": 1.0}}},
    "base_averaged": {"mmlu": {"acc": 0.32}, "perplexity": {"val": {"ppl": 9.0, "bits_per_byte": 0.9}}},
    "sft": {"mmlu": {"acc": 0.27}, "gold": {"gold_score": 0.5}},
    "rlhf": {"mmlu": {"acc": 0.25}, "gold": {"gold_score": 0.7},
             "calibration": {"temperature": 1.5, "all": {"ece": 0.2, "ece_scaled": 0.05}}},
}


def test_delta_pairs_follow_the_stages_and_variants():
    assert delta_pairs(list(SUMMARY)) == [("base", "sft"), ("sft", "rlhf"), ("base", "rlhf"),
                                          ("base", "base_averaged")]
    assert delta_pairs(["a"]) == [] and delta_pairs(["a", "b"]) == [("a", "b")]


def test_reports_show_the_alignment_tax(tmp_path):
    paths = write_reports(SUMMARY, tmp_path, title="t")
    md = paths["markdown"].read_text()
    header = next(line for line in md.splitlines() if line.startswith("| task"))
    assert header.endswith("| Δ sft − base | Δ rlhf − sft | Δ rlhf − base | Δ base_averaged − base |")
    mmlu = next(line for line in md.splitlines() if line.startswith("| mmlu | acc |"))
    # the best model in bold; deltas signed: SFT costs 0.03 of MMLU, RLHF 0.02 more, 0.05 in all
    assert "**0.3200**" in mmlu and mmlu.endswith("| -0.0300 | -0.0200 | -0.0500 | +0.0200 |")
    ppl = next(line for line in md.splitlines() if line.startswith("| perplexity/val | ppl"))
    assert "**9.0000**" in ppl and ppl.endswith("| – | – | – | -1.0000 |")
    assert "| calibration | temperature |" in md and "![metrics by model](report_metrics.png)" in md
    page = paths["html"].read_text()
    assert page.count("<tr>") == md.count("\n| ") and "<td>-0.0500</td>" in page  # header + one per row
    assert paths["plot"].stat().st_size > 1000


def test_pipeline_report_links_the_eval_reports(tmp_path):
    from trellis.report import write_report

    (tmp_path / "eval").mkdir()
    write_reports(SUMMARY, tmp_path / "eval")
    summary = {"name": "t", "stages": ["eval"], "eval": {**SUMMARY, "status": "done", "wall_seconds": 1.0}}
    report = write_report(tmp_path, summary).read_text()
    assert "| mmlu / acc |" in report
    assert "[report.md](eval/report.md), [report.html](eval/report.html)" in report
