import subprocess
import sys

import pytest

from trellis.cli import main


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys; from trellis.cli import build_parser; build_parser().format_help();"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'lm_eval', 'pydantic') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bad_config_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft:\n  nonsense: 1\n")
    assert main(["sft", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sft.nonsense" in err and str(bad) in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_stage_without_input_checkpoint_names_it(tmp_path, capsys):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text("lr: 0.001\n")
    assert main(["sft", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "sft.model" in err and "pretrain" in err


def test_unknown_pipeline_stage(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: x\n")
    assert main(["pipeline", str(cfg), "--stages", "pretrain,dpo"]) == 2
    assert "dpo" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve", "/nonexistent/ckpt"], ["chat", "/nonexistent/ckpt"]])
def test_serve_and_chat_missing_checkpoint(argv, capsys):
    assert main(argv) == 2
    assert "/nonexistent/ckpt" in capsys.readouterr().err
