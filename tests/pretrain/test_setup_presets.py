"""configs/presets/: one config per reference setup of SETUPS.md at full size, and a small variant that runs."""

import json
from pathlib import Path

import pytest

from trellis.config import load_config
from trellis.models.flops import count_params
from trellis.models.presets import resolve_shape
from trellis.pretrain.batching import plan_batch
from trellis.pretrain.schedule import resolve_schedule

PRESETS = Path(__file__).parents[2] / "configs" / "presets"
FULL = sorted(p for p in PRESETS.glob("*.yaml") if not p.stem.endswith("-small"))
SMALL = sorted(PRESETS.glob("*-small.yaml"))


def test_one_full_and_one_small_config_per_setup():
    assert [p.name[0] for p in FULL] == list("abcde")
    assert [p.name.removesuffix("-small.yaml") for p in SMALL] == [p.stem for p in FULL]


# setup: (devices of the write-up, expected accumulation, params in billions (low, high))
EXPECT = {"a": (64, 1, (5, 8)), "b": (128, 8, (38, 42)), "c": (None, None, (7.5, 8.5)),
          "d": (None, None, (400, 410)), "e": (128, 8, (28, 32))}


@pytest.mark.parametrize("path", FULL, ids=lambda p: p.stem)
def test_full_configs_resolve(path):
    cfg = load_config(path).pretrain
    shape = resolve_shape(cfg.model)
    schedule = resolve_schedule(cfg)
    assert schedule.warmup_steps < schedule.total_steps
    devices, accum, (low, high) = EXPECT[path.name[0]]
    vocab = cfg.tokenizer.vocab_size if not cfg.tokenizer.path else 128256
    assert low <= count_params(shape, vocab).total / 1e9 <= high
    if devices:
        assert plan_batch(cfg, devices).accumulation_steps == accum


def test_written_numbers_of_the_setups():
    b = load_config(PRESETS / "b-decoder-128xh100.yaml").pretrain
    assert plan_batch(b, 128).global_batch_size == 1024 and b.averaging.last_fraction == 0.1
    c = load_config(PRESETS / "c-longctx-h100.yaml").pretrain
    assert (c.seq_len_curriculum.start, c.seq_len_curriculum.fraction, c.seq_len) == (2048, 0.1, 8192)
    assert resolve_schedule(c).min_lr == pytest.approx(0.1 * c.lr)
    d = load_config(PRESETS / "d-llama3.1-405b.yaml").pretrain
    assert plan_batch(d, 2048).tokens_per_step == 16 * 2**20 and d.precision == "bf16"
    e = load_config(PRESETS / "e-vlm-30b.yaml").pretrain
    assert resolve_schedule(e).warmup_steps == 5000


@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_small_variant_runs_a_few_steps(path, tmp_path):
    from trellis.pretrain.trainer import pretrain

    cfg = load_config(path)
    overrides = ["pretrain.steps=4", "pretrain.log_every=2", "pretrain.eval_every=2", "pretrain.save_every=2",
                 "pretrain.eval_batches=1"]
    if "warmup_steps" in cfg.pretrain.model_fields_set:
        overrides.append("pretrain.warmup_steps=1")
    if cfg.pretrain.monitor.activations_every:
        overrides.append("pretrain.monitor.activations_every=2")
    if cfg.pretrain.seq_len_curriculum is not None:
        overrides.append("pretrain.seq_len_curriculum.fraction=0.5")
    cfg = load_config(path, overrides)
    pretrain(cfg.pretrain, cfg.world, tmp_path)
    summary = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
    assert summary["status"] == "done"
    assert summary["val_ppl_final"] < summary["val_ppl_initial"]
