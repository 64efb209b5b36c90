import json

import pytest
import torch

from trellis.config.world import WorldConfig
from trellis.pretrain.step import build_loss_scaler, train_step
from trellis.pretrain.trainer import pretrain
from trellis.run import read_metrics


def _model():
    from transformers import LlamaForCausalLM

    from trellis.config.pretrain import ModelSpec
    from trellis.models.presets import build_model_config

    torch.manual_seed(0)
    return LlamaForCausalLM(build_model_config(ModelSpec(preset="micro"), 100))


def test_an_overflowing_step_is_skipped_and_the_scale_backs_off():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # fp16 activations cannot hold gradients scaled by 2^40: they overflow to inf
    scaler = build_loss_scaler("fp16", torch.device("cpu"), init_scale=2.0**40, growth_interval=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = torch.randint(0, 100, (2, 17))
    res = train_step(model, [batch], opt, precision="fp16", grad_clip=1.0, scaler=scaler)
    assert res.skipped and res.loss_scale == 2.0**39
    assert not torch.isfinite(torch.tensor(res.grad_norm))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not opt.state  # AdamW never stepped
    # all parameters are still fp32 (the master weights) while the forward ran in fp16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_clean_steps_update_and_grow_the_scale():
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = build_loss_scaler("fp16", torch.device("cpu"), init_scale=256.0, growth_interval=2)
    batch = torch.randint(0, 100, (2, 17))
    before = model.model.norm.weight.detach().clone()
    scales = [train_step(model, [batch], opt, precision="fp16", grad_clip=1.0, scaler=scaler) for _ in range(4)]
    assert [r.skipped for r in scales] == [False] * 4
    assert [r.loss_scale for r in scales] == [256.0, 512.0, 512.0, 1024.0]
    assert not torch.equal(model.model.norm.weight, before)


def test_fp16_run_logs_the_scale_and_resumes_it(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=12, save_every=6, log_every=1, eval_every=100, keep_last=1, precision="fp16",
                       loss_scale_init=2.0**24, loss_scale_growth_interval=3)
    pretrain(cfg, WorldConfig(), tmp_path / "straight")
    pretrain(cfg, WorldConfig(), tmp_path / "resumed", stop_after=6)
    state = torch.load(tmp_path / "resumed/pretrain/checkpoints/step-0000006/trainer_state.pt", weights_only=True)
    assert state["loss_scaler"]["scale"] < 2.0**24 and state["skipped_steps"] >= 1
    pretrain(cfg, WorldConfig(), tmp_path / "resumed")
    recs = {r["step"]: r for r in read_metrics(tmp_path / "straight/pretrain/metrics.jsonl") if "loss" in r}
    again = {r["step"]: r for r in read_metrics(tmp_path / "resumed/pretrain/metrics.jsonl") if "loss" in r}
    # the first steps overflow and are skipped, halving the scale each time, until it fits
    assert recs[1]["loss_scale"] == 2.0**23 and recs[1]["skipped_steps"] == 1
    assert 1 <= recs[12]["skipped_steps"] < 12 and recs[12]["loss_scale"] < 2.0**24
    assert [(r["loss"], r["loss_scale"], r["skipped_steps"]) for _, r in sorted(recs.items())] == \
        [(r["loss"], r["loss_scale"], r["skipped_steps"]) for _, r in sorted(again.items())]
    summary = json.loads((tmp_path / "straight/pretrain/summary.json").read_text())
    assert summary["skipped_steps"] == recs[12]["skipped_steps"]
    assert summary["val_ppl_final"] < summary["val_ppl_initial"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_scaler_outside_fp16(precision):
    assert build_loss_scaler(precision, torch.device("cpu"), 2.0**16, 2000) is None
