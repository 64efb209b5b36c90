import pytest

from trellis.config.pretrain import PretrainData
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError
from trellis.pretrain.corpus import load_corpus, split_documents


def test_documents_split_on_blank_lines():
    text = "one line\nsame doc\n\n  \nsecond\r\n\r\nthird\n\n\n"
    assert split_documents(text) == ["one line\nsame doc", "second", "third"]


def test_holdout_is_the_last_five_percent(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n\n".join(f"doc {i}" for i in range(40)))
    train, val = load_corpus(PretrainData(source="files", train_files=[str(f)]), WorldConfig())
    assert len(train) == 38 and val == ["doc 38", "doc 39"]


def test_missing_or_empty_inputs_fail(tmp_path):
    with pytest.raises(TrellisError, match="train_files"):
        load_corpus(PretrainData(source="files"), WorldConfig())
    good = tmp_path / "a.txt"
    good.write_text("a\n\nb\n\nc")
    missing = tmp_path / "val.txt"
    with pytest.raises(TrellisError, match=r"val_files: .*val\.txt: file not found"):
        load_corpus(PretrainData(source="files", train_files=[str(good)], val_files=[str(missing)]), WorldConfig())
    one = tmp_path / "one.txt"
    one.write_text("just one document")
    with pytest.raises(TrellisError, match="too few"):
        load_corpus(PretrainData(source="files", train_files=[str(one)]), WorldConfig())


def test_world_source_gives_train_and_val_documents():
    train, val = load_corpus(PretrainData(source="world"), WorldConfig())
    assert len(train) > 5 * len(val) > 0
    assert not set(train) & set(val)
