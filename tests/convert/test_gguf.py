"""convert_gguf on a tiny Llama written as GGUF here (seconds, offline), and its error paths."""

from __future__ import annotations

import json

import pytest
import torch

from trellis.cli import main
from trellis.convert.gguf import PROVENANCE_FILE, convert_gguf
from trellis.errors import TrellisError

TEXT = "Paris is the capital of France. <|im_start|>user\nWhat is the colour of the sky?<|im_end|>"


@pytest.fixture(scope="module")
def gqa_checkpoint(tiny_chat_checkpoint, tmp_path_factory):
    """The tiny chat checkpoint with 4 query heads sharing 2 KV heads, so the q/k un-permutation is tested."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_chat_checkpoint)
    config.num_key_value_heads = 2
    torch.manual_seed(1)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("gqa") / "src"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_chat_checkpoint).save_pretrained(out)
    return out


def _gguf(src, path, quant):
    from trellis.convert.testing import write_llama_gguf

    return write_llama_gguf(src, path, quant=quant)


@pytest.mark.parametrize("quant,atol", [("F32", 1e-5), ("Q8_0", 0.05)])
def test_converted_checkpoint_reloads_and_matches_the_source(gqa_checkpoint, tmp_path, quant, atol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = _gguf(gqa_checkpoint, tmp_path / f"tiny.{quant}.gguf", quant)
    out = convert_gguf(gguf_file, tmp_path / "out")

    assert (out / "model.safetensors").exists() and not (tmp_path / "out.tmp").exists()
    src_model = AutoModelForCausalLM.from_pretrained(gqa_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_key_value_heads == 2 and model.config.tie_word_embeddings
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    src_tok, tok = AutoTokenizer.from_pretrained(gqa_checkpoint), AutoTokenizer.from_pretrained(out)
    assert tok(TEXT).input_ids == src_tok(TEXT).input_ids
    assert tok.chat_template == src_tok.chat_template
    vocab = tok.get_vocab()
    assert model.generation_config.eos_token_id == [vocab["<|im_end|>"], vocab["<|endoftext|>"]]

    ids = torch.tensor([src_tok(TEXT).input_ids])
    with torch.no_grad():
        expected, got = src_model(ids).logits, model(ids).logits
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)
    provenance = json.loads((out / PROVENANCE_FILE).read_text())
    assert provenance["format"] == "gguf" and provenance["architecture"] == "LlamaForCausalLM"


def test_bfloat16_output_and_overwrite(gqa_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    gguf_file = _gguf(gqa_checkpoint, tmp_path / "tiny.gguf", "F32")
    out = tmp_path / "out"
    convert_gguf(gguf_file, out)
    with pytest.raises(TrellisError, match="not empty"):
        convert_gguf(gguf_file, out)
    convert_gguf(gguf_file, out, overwrite=True, dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_missing_file_is_named(tmp_path):
    with pytest.raises(TrellisError, match="nope.gguf: GGUF file not found"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(TrellisError, match="expected a GGUF file"):
        convert_gguf(tmp_path, tmp_path / "out")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00{}      ")
    with pytest.raises(TrellisError, match="model.safetensors: not a GGUF file"):
        convert_gguf(bad, tmp_path / "out")


def test_non_empty_output_dir_is_refused_before_loading(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 32)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TrellisError, match="out: output directory exists and is not empty"):
        convert_gguf(fake, out)
    assert (out / "notes.txt").read_text() == "mine"


def test_truncated_gguf_is_one_line_naming_the_file(tmp_path):
    fake = tmp_path / "broken.gguf"
    fake.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(TrellisError, match="broken.gguf: transformers cannot load this GGUF") as info:
        convert_gguf(fake, tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unknown_dtype(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 32)
    with pytest.raises(TrellisError, match="dtype 'int8'"):
        convert_gguf(fake, tmp_path / "out", dtype="int8")


def test_cli_convert_gguf_error_exits_2(tmp_path, capsys):
    assert main(["convert", "gguf", str(tmp_path / "nope.gguf"), str(tmp_path / "out")]) == 2
    assert "trellis: error:" in capsys.readouterr().err


def test_cli_convert_gguf_writes_checkpoint(gqa_checkpoint, tmp_path, capsys):
    gguf_file = _gguf(gqa_checkpoint, tmp_path / "tiny.gguf", "Q8_0")
    assert main(["convert", "gguf", str(gguf_file), str(tmp_path / "out")]) == 0
    assert "converted:" in capsys.readouterr().out
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_cli_convert_needs_a_subcommand(capsys):
    assert main(["convert"]) == 2
