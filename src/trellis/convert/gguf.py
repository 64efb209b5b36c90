"""De-quantize a GGUF file into a safetensors Hugging Face checkpoint with its tokenizer and chat template.

transformers reads GGUF (`from_pretrained(dir, gguf_file=NAME)`, needs the `gguf` package) and
de-quantizes every tensor, but the model it returns is marked as GGUF-quantized and refuses
`save_pretrained`. So we build a fresh model of the same architecture from the config minus its
`quantization_config`, load the de-quantized state dict into it, and save that.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError

GGUF_MAGIC = b"GGUF"
PROVENANCE_FILE = "trellis_convert.json"
DTYPES = ("float32", "bfloat16", "float16")
# End-of-turn / end-of-document tokens that should stop generation when the vocabulary has them.
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>")


def check_gguf_file(path: str | Path) -> Path:
    """Fail with a one-line message unless `path` is a readable file that starts with the GGUF magic."""
    p = Path(path)
    if not p.exists():
        raise TrellisError(f"{p}: GGUF file not found")
    if not p.is_file():
        raise TrellisError(f"{p}: expected a GGUF file, got a directory")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise TrellisError(f"{p}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    return p


def check_output_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise TrellisError(f"{out}: output exists and is a file")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TrellisError(f"{out}: output directory exists and is not empty (pass overwrite=True / --overwrite)")


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, overwrite: bool = False,
                 dtype: str = "float32") -> Path:
    """Write `out_dir` = a safetensors HF checkpoint de-quantized from `gguf_file`; return `out_dir`.

    float32 (the default) keeps the de-quantized values exactly; bfloat16/float16 halve the size.
    The tokenizer (with the chat template stored in the GGUF) and a generation_config whose
    eos_token_id lists every end-of-turn token the vocabulary has are saved with the weights.
    The directory appears all at once (trellis.run.save_atomic), so a kill leaves no half checkpoint.
    """
    src = check_gguf_file(gguf_file).resolve()
    out = Path(out_dir)
    check_output_dir(out, overwrite)
    if dtype not in DTYPES:
        raise TrellisError(f"{src}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")

    model, tokenizer = _load_gguf(src)
    fresh = _dequantized_copy(src, model, dtype)
    del model
    _set_stop_tokens(fresh, tokenizer)

    from trellis.run import save_atomic

    def write(tmp: Path) -> None:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(_provenance(src, fresh, dtype), indent=2) + "\n")

    out.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic(out, write)


def _load_gguf(src: Path) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet = os.environ.get("TRELLIS_NO_PROGRESS") == "1"
    if quiet:
        transformers.utils.logging.disable_progress_bar()
    try:
        with _quiet_gguf_progress(quiet):
            model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
            tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    except Exception as exc:  # noqa: BLE001 - every loader failure becomes one line naming the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrellisError(f"{src}: transformers cannot load this GGUF: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _dequantized_copy(src: Path, model: Any, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    torch_dtype = getattr(torch, dtype)
    with _skip_weight_init():  # every weight is overwritten below; random init would only cost time
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    result = fresh.load_state_dict(model.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise TrellisError(f"{src}: de-quantized weights do not fit {type(fresh).__name__}: "
                           f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    if config.tie_word_embeddings:
        fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh.to(torch_dtype).eval()


@contextlib.contextmanager
def _quiet_gguf_progress(quiet: bool):
    """transformers' de-quantization loop uses a bare tqdm that its progress-bar switch does not reach."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    if not quiet or gguf_utils is None or not hasattr(gguf_utils, "tqdm"):
        yield
        return
    original = gguf_utils.tqdm
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


@contextlib.contextmanager
def _skip_weight_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: random init is slower but correct
        yield
        return
    with no_init_weights():
        yield


def _set_stop_tokens(model: Any, tokenizer: Any) -> None:
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids += [vocab[t] for t in STOP_TOKENS if t in vocab]
    ids = list(dict.fromkeys(ids))
    gen = model.generation_config
    gen.eos_token_id = ids if len(ids) > 1 else (ids[0] if ids else None)
    gen.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def _provenance(src: Path, model: Any, dtype: str) -> dict[str, Any]:
    import transformers

    return {
        "source": str(src),
        "source_bytes": src.stat().st_size,
        "format": "gguf",
        "dtype": dtype,
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "transformers": transformers.__version__,
    }
