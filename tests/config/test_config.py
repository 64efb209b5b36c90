from pathlib import Path

import pytest
import yaml

from trellis.config import PipelineConfig, load_config
from trellis.errors import TrellisError


def write(tmp_path: Path, data, name="c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_pipeline_file_sections_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, {"name": "x", "sft": {"lr": 2e-4}, "world": {"seed": 3}}))
    assert cfg.name == "x" and cfg.sft.lr == 2e-4 and cfg.world.seed == 3
    assert cfg.reward.lr == PipelineConfig().reward.lr


def test_stage_file_fields_at_top_level(tmp_path):
    cfg = load_config(write(tmp_path, {"lr": 1e-5, "steps": 3, "world": {"seed": 9}}), stage="rlhf")
    assert cfg.rlhf.lr == 1e-5 and cfg.rlhf.steps == 3 and cfg.world.seed == 9


def test_set_overrides_typed_values(tmp_path):
    cfg = load_config(write(tmp_path, {}), ["sft.lr=3e-4", "pretrain.model.num_layers=3", "eval.tasks=[a, b]"])
    assert cfg.sft.lr == 3e-4
    assert cfg.pretrain.model.num_layers == 3
    assert cfg.eval.tasks == ["a", "b"]


def test_set_on_stage_file_without_prefix(tmp_path):
    cfg = load_config(write(tmp_path, {"lr": 1.0}), ["lr=0.5", "world.seed=4"], stage="sft")
    assert cfg.sft.lr == 0.5 and cfg.world.seed == 4


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"sft": {"learning_rate": 1}})
    with pytest.raises(TrellisError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "sft.learning_rate" in str(err.value)
    assert "unknown key" in str(err.value)


def test_wrong_type_names_key_and_value(tmp_path):
    path = write(tmp_path, {"pretrain": {"steps": "many"}})
    with pytest.raises(TrellisError) as err:
        load_config(path)
    assert "pretrain.steps" in str(err.value) and "'many'" in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "sft:\n  lr: [1, 2\n")
    with pytest.raises(TrellisError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(TrellisError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_not_a_mapping(tmp_path):
    with pytest.raises(TrellisError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_bad_set_syntax():
    with pytest.raises(TrellisError, match="KEY=VALUE"):
        load_config(None, ["sft.lr"])


def test_unknown_stage_in_stages(tmp_path):
    with pytest.raises(TrellisError, match="stages"):
        load_config(write(tmp_path, {"stages": ["pretrain", "dpo"]}))
