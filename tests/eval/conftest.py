"""Fixtures of the eval tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_fixtures import build_tiny, write_task_files


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny(out)
    return out


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from trellis.checkpoint import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_dir), load_tokenizer(tiny_dir)



@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> Path:
    return write_task_files(tmp_path_factory.mktemp("taskdata"))
