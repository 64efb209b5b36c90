import json

import pytest

from trellis.config import EvalConfig, WorldConfig
from trellis.errors import TrellisError


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from eval_fixtures import build_tiny

    root = tmp_path_factory.mktemp("models")
    build_tiny(root / "a", seed=0)
    build_tiny(root / "b", seed=1)
    return {"a": str(root / "a"), "b": str(root / "b")}


def test_eval_stage_end_to_end(two_models, tmp_path):
    from trellis.eval.stage import run

    (tmp_path / "extra.txt").write_text("The sky is blue. Mira the otter swims. " * 10)
    config = EvalConfig(models=two_models, limit=3, gold_prompts=4, max_new_tokens=4, batch_size=8,
                        perplexity={"world_val": "world", "extra": str(tmp_path / "extra.txt")},
                        fewshot={"world_mmlu": 1})
    out = run(config, WorldConfig(), tmp_path / "run")
    assert out == tmp_path / "run" / "eval"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "done" and summary["wall_seconds"] > 0
    for name in ("a", "b"):
        entry = summary[name]
        assert set(entry["world_hellaswag"]) == {"acc", "acc_norm"}
        assert 0 <= entry["world_mmlu"]["acc"] <= 1 and "acc" in entry["world_truthfulqa_mc2"]
        assert entry["perplexity"]["world_val"]["ppl"] > 1 and entry["perplexity"]["extra"]["bits_per_byte"] > 0
        assert 0 <= entry["gold"]["gold_score"] <= 1 and entry["gold"]["n"] == 4
        results = json.loads((out / "results" / f"{name}.json").read_text())
        assert results["n-shot"]["world_mmlu_world"] == 1 and len(results["gold"]["samples"]) == 4
    assert summary["a"]["world_hellaswag"] != summary["b"]["world_hellaswag"] or \
        summary["a"]["perplexity"] != summary["b"]["perplexity"]
    report = (out / "report.md").read_text()
    assert "| task | metric | a | b |" in report and "| world_mmlu | acc |" in report
    assert "| gold | gold_score |" in report and "perplexity/world_val" in report
    # a rerun reuses every model's saved results
    mtime = (out / "results" / "a.json").stat().st_mtime
    again = run(config, WorldConfig(), tmp_path / "run")
    assert (again / "results" / "a.json").stat().st_mtime == mtime
    assert json.loads((again / "summary.json").read_text())["a"] == summary["a"]


def test_eval_stage_rejects_unknown_task_and_bad_model(two_models, tmp_path):
    from trellis.eval.stage import run

    with pytest.raises(TrellisError, match="unknown task 'hellaswag'.*world_hellaswag"):
        run(EvalConfig(models=two_models, tasks=["hellaswag"], gold=False, perplexity={}), WorldConfig(),
            tmp_path / "r1")
    with pytest.raises(TrellisError, match="missing"):
        run(EvalConfig(models={"x": str(tmp_path / "missing")}), WorldConfig(), tmp_path / "r2")
    with pytest.raises(TrellisError, match="eval.models"):
        run(EvalConfig(), WorldConfig(), tmp_path / "r3")


def test_eval_stage_calibrates_and_writes_temperature(two_models, tmp_path, monkeypatch):
    import shutil

    from transformers import GenerationConfig

    from trellis.eval import calibration
    from trellis.eval.calibration import TOKEN_TEMPERATURES
    from trellis.eval.stage import run

    model = tmp_path / "model"
    shutil.copytree(two_models["a"], model)
    before = GenerationConfig.from_pretrained(model).temperature
    config = EvalConfig(models={"a": str(model)}, tasks=["world_hellaswag", "world_mmlu", "world_truthfulqa_mc2"],
                        limit=6, gold=False, perplexity={}, calibration=True, write_temperature=True)
    out = run(config, WorldConfig(), tmp_path / "run")
    calib = json.loads((out / "summary.json").read_text())["a"]["calibration"]
    # mc2 has several true answers per question: no single gold to calibrate against
    assert {"world_hellaswag", "world_mmlu", "all"} <= set(calib) and "world_truthfulqa_mc2" not in calib
    assert calib["fit_documents"] + calib["all"]["n"] == 12 and 0 <= calib["all"]["ece"] <= 1
    assert 0 <= calib["all"]["ece_scaled"] <= 1 and calib["choice_temperature"] > 0
    assert len(calib["nll_by_temperature"]) == len(TOKEN_TEMPERATURES)
    written = GenerationConfig.from_pretrained(model).temperature
    if calib["temperature_at_limit"]:  # an edge of the grid is not an optimum: nothing written
        assert calib["temperature_written"] is False and written == pytest.approx(before)
    else:
        assert calib["temperature_written"].endswith("generation_config.json")
        assert written == pytest.approx(calib["temperature"], rel=1e-5)
    # forced to the edge: the checkpoint keeps its own temperature
    monkeypatch.setattr(calibration, "TOKEN_TEMPERATURES", (0.5, 1.0))
    shutil.copytree(two_models["a"], tmp_path / "model2")
    config2 = config.model_copy(update={"models": {"a": str(tmp_path / "model2")}})
    calib2 = json.loads((run(config2, WorldConfig(), tmp_path / "run2") / "summary.json").read_text())["a"]["calibration"]
    assert calib2["temperature"] in (0.5, 1.0) and calib2["temperature_at_limit"] is True
    assert calib2["temperature_written"] is False
    assert GenerationConfig.from_pretrained(tmp_path / "model2").temperature == pytest.approx(before)
    with pytest.raises(ValueError, match="write_temperature"):
        EvalConfig(write_temperature=True)


def test_local_source_names_what_is_missing(two_models, tmp_path):
    from eval_fixtures import write_task_files

    from trellis.eval.stage import run

    data = write_task_files(tmp_path / "data")
    (data / "truthfulqa" / "mc_task.json").unlink()
    config = EvalConfig(models={"a": two_models["a"]}, source="local", data_dir=str(data), gold=False, perplexity={})
    with pytest.raises(TrellisError, match=r"unknown task 'truthfulqa_mc1'.*truthfulqa: no mc_task.json"):
        run(config, WorldConfig(), tmp_path / "run")
    with pytest.raises(TrellisError, match="eval.data_dir"):
        run(config.model_copy(update={"data_dir": str(tmp_path / "none")}), WorldConfig(), tmp_path / "run2")
