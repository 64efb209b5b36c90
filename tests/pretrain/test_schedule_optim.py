import pytest

from trellis.pretrain.optim import build_optimizer, param_groups
from trellis.pretrain.schedule import build_scheduler, lr_at

KW = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "total_steps": 110}


def test_warmup_is_linear_from_zero_to_peak():
    assert lr_at(0, **KW) == pytest.approx(1e-4)
    assert lr_at(4, **KW) == pytest.approx(5e-4)
    assert lr_at(9, **KW) == pytest.approx(1e-3)
    assert lr_at(10, **KW) == pytest.approx(1e-3)


def test_cosine_reaches_the_floor_and_stays():
    assert lr_at(60, **KW) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(110, **KW) == pytest.approx(1e-4)
    assert lr_at(500, **KW) == pytest.approx(1e-4)
    values = [lr_at(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_no_warmup_starts_at_peak():
    assert lr_at(0, lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10) == pytest.approx(1.0)


def _micro_model():
    from transformers import LlamaForCausalLM

    from trellis.config.pretrain import ModelSpec
    from trellis.models.presets import build_model_config

    return LlamaForCausalLM(build_model_config(ModelSpec(preset="micro"), 300))


def test_weight_decay_only_on_matrices():
    model = _micro_model()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    # every trainable parameter once (the tied head is the embedding)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_scheduler_drives_optimizer_lr():
    model = _micro_model()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    sched = build_scheduler(opt, **KW)
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **KW) for s in range(12)])
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
