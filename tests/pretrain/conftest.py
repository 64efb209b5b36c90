import random
from pathlib import Path

import pytest

from trellis.config.pretrain import PretrainConfig

NAMES = ["Ada", "Bo", "Cy", "Dee", "Eli", "Fay", "Gus", "Hal"]
PLACES = ["Oakvale", "Rivermouth", "Stonehill", "Pinecrest"]
PETS = ["cat", "dog", "owl", "fox"]


def make_corpus(path: Path, n_docs: int = 240, seed: int = 0) -> Path:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        n, p, a = rng.choice(NAMES), rng.choice(PLACES), rng.choice(PETS)
        docs.append(f"{n} lives in {p}. {n} has a {a}.\nThe {a} of {n} likes {p}.")
    path.write_text("\n\n".join(docs) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "train.txt")


def _micro_config(train_file: Path, **overrides) -> PretrainConfig:
    base = {
        "model": {"preset": "micro"},
        "tokenizer": {"vocab_size": 300},
        "data": {"source": "files", "train_files": [str(train_file)]},
        "seq_len": 32, "batch_size": 8, "steps": 40, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5,
        "log_every": 5, "eval_every": 20, "eval_batches": 2, "save_every": 20, "keep_last": 2,
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return PretrainConfig.model_validate(base)


@pytest.fixture
def micro_config():
    """A factory: micro_config(train_file, **overrides) -> PretrainConfig for a seconds-long run."""
    return _micro_config
