"""The pretraining corpus: the synthetic world's documents, or plain UTF-8 text files."""

from __future__ import annotations

import re
from pathlib import Path

from trellis.config.pretrain import PretrainData
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError

# without val_files, this last fraction of the training documents is held out for validation
HOLDOUT_FRACTION = 0.05

_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def split_documents(text: str) -> list[str]:
    """A file's documents: its paragraphs, split on blank lines, stripped, empty ones dropped."""
    return [doc.strip() for doc in _BLANK_LINES.split(text.replace("\r\n", "\n")) if doc.strip()]


def read_text_files(paths: list[str], key: str) -> list[str]:
    docs: list[str] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            what = "is a directory, expected a text file" if path.is_dir() else "file not found"
            raise TrellisError(f"{key}: {path}: {what}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise TrellisError(f"{key}: {path}: not UTF-8 text (byte {exc.start})") from None
        docs.extend(split_documents(text))
    return docs


def load_corpus(data: PretrainData, world: WorldConfig) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) for the configured source."""
    if data.source == "world":
        from trellis.data.world import World

        w = World(world)
        train, val = list(w.corpus("train")), list(w.corpus("val"))
    else:
        if not data.train_files:
            raise TrellisError("pretrain.data.train_files: empty, but data.source is 'files'")
        train = read_text_files(data.train_files, "pretrain.data.train_files")
        if data.val_files:
            val = read_text_files(data.val_files, "pretrain.data.val_files")
        else:
            if len(train) < 2:
                raise TrellisError(
                    f"pretrain.data.train_files: {len(train)} document(s), too few to hold out validation "
                    "documents; add more (separated by blank lines) or set pretrain.data.val_files"
                )
            n_val = max(1, round(len(train) * HOLDOUT_FRACTION))
            train, val = train[:-n_val], train[-n_val:]
    if not train:
        raise TrellisError(f"pretrain.data: the {data.source} source has no training documents")
    if not val:
        raise TrellisError(f"pretrain.data: the {data.source} source has no validation documents")
    return train, val


def load_val_sets(data: PretrainData) -> dict[str, list[str]]:
    """The named extra validation sets (data.val_sets), each a list of documents."""
    sets: dict[str, list[str]] = {}
    for name, files in data.val_sets.items():
        key = f"pretrain.data.val_sets.{name}"
        if not files:
            raise TrellisError(f"{key}: no files")
        docs = read_text_files(files, key)
        if not docs:
            raise TrellisError(f"{key}: the files hold no documents")
        sets[name] = docs
    return sets
