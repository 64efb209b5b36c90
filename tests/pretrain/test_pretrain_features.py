"""Whole-run tests of the opt-in pretraining features on the micro model (a few seconds each)."""

import json

import pytest
import torch

from trellis.config.pretrain import PretrainConfig
from trellis.config.world import WorldConfig
from trellis.errors import TrellisError
from trellis.pretrain.averaging import average_state_dicts
from trellis.pretrain.trainer import pretrain
from trellis.run import read_metrics


def _without(cfg, *keys):
    """The config as if `keys` had never been set (the micro base sets warmup_steps and min_lr)."""
    data = {k: v for k, v in cfg.model_dump(exclude_unset=True).items() if k not in keys}
    return PretrainConfig.model_validate(data)


def _summary(stage):
    return json.loads((stage / "summary.json").read_text())


def test_average_state_dicts_is_the_mean():
    states = [{"w": torch.full((2, 2), float(i)), "b": torch.tensor([i, 2.0 * i])} for i in (1, 2, 6)]
    avg = average_state_dicts(states)
    assert torch.equal(avg["w"], torch.full((2, 2), 3.0)) and torch.equal(avg["b"], torch.tensor([3.0, 6.0]))


def test_checkpoint_average_and_ema_are_written_and_evaluated(corpus, tmp_path, micro_config):
    from safetensors.torch import load_file

    cfg = micro_config(corpus, steps=20, save_every=4, keep_last=10, eval_every=100,
                       averaging={"last_fraction": 0.5, "ema_decay": 0.9})
    pretrain(cfg, WorldConfig(), tmp_path / "r")
    stage = tmp_path / "r" / "pretrain"
    summary = _summary(stage)
    # the save steps in the final 50% (10..20) and the last step
    assert summary["averaged_steps"] == [12, 16, 20]
    ckpts = [load_file(stage / "checkpoints" / f"step-{s:07d}" / "model.safetensors") for s in (12, 16, 20)]
    averaged = load_file(stage / "averaged" / "model.safetensors")
    assert set(averaged) == set(ckpts[0])
    for key in averaged:
        torch.testing.assert_close(averaged[key], sum(c[key] for c in ckpts) / 3, rtol=0, atol=1e-7)
    assert not torch.equal(averaged["model.norm.weight"], ckpts[-1]["model.norm.weight"])
    assert (stage / "averaged" / "tokenizer.json").exists() and (stage / "ema" / "config.json").exists()
    for key in ("val_ppl_averaged", "val_ppl_ema", "val_ppl_final"):
        assert 1.0 < summary[key] < summary["val_ppl_initial"]


def test_averaging_survives_a_resume(corpus, tmp_path, micro_config):
    from safetensors.torch import load_file

    cfg = micro_config(corpus, steps=12, save_every=4, keep_last=1, eval_every=100, log_every=1,
                       averaging={"last_fraction": 0.7, "ema_decay": 0.8})
    pretrain(cfg, WorldConfig(), tmp_path / "a")
    pretrain(cfg, WorldConfig(), tmp_path / "b", stop_after=8)
    pretrain(cfg, WorldConfig(), tmp_path / "b")
    for name in ("averaged", "ema"):
        wa = load_file(tmp_path / "a" / "pretrain" / name / "model.safetensors")
        wb = load_file(tmp_path / "b" / "pretrain" / name / "model.safetensors")
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _summary(tmp_path / "b" / "pretrain")["averaged_steps"] == [4, 8, 12]


def test_accumulation_curriculum_monitors_and_val_sets(corpus, tmp_path, micro_config):
    domain = tmp_path / "domain.txt"
    domain.write_text("Ada has a cat.\n\nBo lives in Stonehill.\n\nThe owl of Cy likes Oakvale.\n")
    cfg = micro_config(corpus, steps=10, log_every=5, eval_every=5, save_every=100,
                       global_batch_tokens=8 * 32, micro_batch_size=2, warmup_fraction=0.2, min_lr_ratio=0.1,
                       seq_len_curriculum={"start": 8, "fraction": 0.5, "multiple": 8},
                       data={"val_sets": {"domain": [str(domain)]}},
                       monitor={"grad_norm_groups": True, "activations_every": 3, "mfu": True, "memory": True})
    cfg = _without(cfg, "warmup_steps", "min_lr")
    pretrain(cfg, WorldConfig(), tmp_path / "r")
    stage = tmp_path / "r" / "pretrain"
    records = read_metrics(stage / "metrics.jsonl")
    logs = {r["step"]: r for r in records if "loss" in r}
    assert logs[5]["seq_len"] == 16 and logs[10]["seq_len"] == 32  # step 5 is index 4 of a 5-step ramp
    assert logs[10]["tokens"] == 10 * 8 * 32  # tokens per step constant through the curriculum
    first = logs[5]
    assert first["grad_norm.decay"] ** 2 + first["grad_norm.no_decay"] ** 2 == pytest.approx(first["grad_norm"] ** 2,
                                                                                             rel=1e-4)
    assert first["flops_per_token"] > 0 and 0 < first["mfu"] < 1 and first["peak_tflops"] > 0
    assert first["max_rss_gb"] > 0.05
    acts = [r for r in records if "act_rms.0" in r]
    assert [r["step"] for r in acts] == [3, 6, 9]
    assert all(r["act_max.1"] >= r["act_rms.1"] > 0 for r in acts)
    evals = [r for r in records if "val_ppl.domain" in r]
    assert [r["step"] for r in evals] == [0, 5, 10]
    summary = _summary(stage)
    assert summary["accumulation_steps"] == 4 and summary["val_ppl.domain"] < evals[0]["val_ppl.domain"]
    assert summary["peak_source"] == "matmul probe" and summary["peak_memory_gb"] > 0


def test_resume_with_accumulation_and_curriculum_is_bitwise(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=10, warmup_steps=2, log_every=1, eval_every=100, save_every=4, keep_last=1,
                       global_batch_size=8, micro_batch_size=2,
                       seq_len_curriculum={"start": 8, "fraction": 0.6, "multiple": 8})
    pretrain(cfg, WorldConfig(), tmp_path / "a")
    pretrain(cfg, WorldConfig(), tmp_path / "b", stop_after=4)
    torch.manual_seed(999)
    pretrain(cfg, WorldConfig(), tmp_path / "b")
    la = [(r["loss"], r["seq_len"]) for r in read_metrics(tmp_path / "a" / "pretrain" / "metrics.jsonl") if "loss" in r]
    lb = [(r["loss"], r["seq_len"]) for r in read_metrics(tmp_path / "b" / "pretrain" / "metrics.jsonl") if "loss" in r]
    assert la == lb and [n for _, n in la] == [8, 8, 16, 16, 16, 16, 32, 32, 32, 32]


def test_early_stop_on_target_and_on_patience(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=40, eval_every=5, save_every=100, early_stop={"target_ppl": 1e6})
    pretrain(cfg, WorldConfig(), tmp_path / "t")
    summary = _summary(tmp_path / "t" / "pretrain")
    assert summary["steps"] == 5 and "target_ppl" in summary["stopped_early"]
    assert (tmp_path / "t" / "pretrain" / "final" / "model.safetensors").exists()
    # min_delta 0.99: no evaluation counts as an improvement after the first
    cfg = micro_config(corpus, steps=40, eval_every=5, save_every=100,
                       early_stop={"patience": 2, "min_delta": 0.99})
    pretrain(cfg, WorldConfig(), tmp_path / "p")
    summary = _summary(tmp_path / "p" / "pretrain")
    assert summary["steps"] == 15 and "patience" in summary["stopped_early"]


def test_resume_into_another_shape_fails_and_leaves_the_checkpoint(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=8, save_every=4)
    pretrain(cfg, WorldConfig(), tmp_path / "r", stop_after=4)
    ckpt = tmp_path / "r" / "pretrain" / "checkpoints" / "step-0000004"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    wider = micro_config(corpus, steps=8, save_every=4, model={"hidden_size": 96, "num_layers": 3})
    with pytest.raises(TrellisError, match=r"step-0000004: checkpoint is of another model shape "
                                           r"\(model.hidden_size 96 vs 64; model.num_layers 3 vs 2"):
        pretrain(wider, WorldConfig(), tmp_path / "r")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["step-0000004"]


def test_bad_batch_and_warmup_stop_before_any_work(corpus, tmp_path, micro_config):
    with pytest.raises(TrellisError, match=r"global_batch_size: 12 sequences per step is not divisible by "
                                           r"pretrain.micro_batch_size 8"):
        pretrain(micro_config(corpus, global_batch_size=12, micro_batch_size=8), WorldConfig(), tmp_path / "a")
    with pytest.raises(TrellisError, match=r"warmup_steps: 50 is longer than training \(pretrain.steps: 40\)"):
        pretrain(micro_config(corpus, warmup_steps=50), WorldConfig(), tmp_path / "b")
    assert not (tmp_path / "a" / "pretrain" / "checkpoints").exists()


def test_gradient_checkpointing_gives_the_same_losses(corpus, tmp_path, micro_config):
    base = micro_config(corpus, steps=3, warmup_steps=2, log_every=1, save_every=100, eval_every=100)
    ckpt = micro_config(corpus, steps=3, warmup_steps=2, log_every=1, save_every=100, eval_every=100,
                        gradient_checkpointing=True)
    pretrain(base, WorldConfig(), tmp_path / "a")
    pretrain(ckpt, WorldConfig(), tmp_path / "b")
    la = [r["loss"] for r in read_metrics(tmp_path / "a" / "pretrain" / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b" / "pretrain" / "metrics.jsonl") if "loss" in r]
    assert lb == pytest.approx(la, rel=1e-5)


@pytest.mark.slow
def test_torch_compile_gives_the_same_losses(corpus, tmp_path, micro_config):
    # about 25 s on CPU: inductor compiles the forward and backward first
    runs = {}
    for compiled in (False, True):
        cfg = micro_config(corpus, steps=4, warmup_steps=2, log_every=1, save_every=100, eval_every=100,
                           compile=compiled)
        pretrain(cfg, WorldConfig(), tmp_path / str(compiled))
        runs[compiled] = [r["loss"] for r in read_metrics(tmp_path / str(compiled) / "pretrain" / "metrics.jsonl")
                          if "loss" in r]
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    assert (tmp_path / "True" / "pretrain" / "final" / "model.safetensors").exists()


def test_vocab_size_pads_the_embedding_table(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=2, warmup_steps=1, save_every=100, eval_every=100, model={"vocab_size": 384})
    final = pretrain(cfg, WorldConfig(), tmp_path / "a")
    config = json.loads((final / "config.json").read_text())
    assert config["vocab_size"] == 384
    summary = _summary(tmp_path / "a" / "pretrain")
    assert summary["vocab_size"] == 384
    # the padded rows are counted: 384 x 64 embedding rows (tied) on top of the same layers
    unpadded = micro_config(corpus, steps=2, warmup_steps=1, save_every=100, eval_every=100)
    pretrain(unpadded, WorldConfig(), tmp_path / "b")
    rows = _summary(tmp_path / "b" / "pretrain")["vocab_size"]
    assert rows < 384
    assert summary["params"] - _summary(tmp_path / "b" / "pretrain")["params"] == (384 - rows) * 64 * (
        1 if config["tie_word_embeddings"] else 2)


def test_vocab_size_below_the_tokenizer_fails(corpus, tmp_path, micro_config):
    with pytest.raises(TrellisError, match=r"pretrain.model.vocab_size: 100 is smaller than the tokenizer's"):
        pretrain(micro_config(corpus, model={"vocab_size": 100}), WorldConfig(), tmp_path / "a")
