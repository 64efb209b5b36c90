import pytest

from trellis.config.pretrain import PretrainConfig
from trellis.errors import TrellisError
from trellis.pretrain.schedule import lr_at, resolve_schedule


def _sched(**fields):
    return resolve_schedule(PretrainConfig.model_validate(fields))


def _lr(s, step):
    return lr_at(step, lr=s.lr, min_lr=s.min_lr, warmup_steps=s.warmup_steps, total_steps=s.total_steps, kind=s.kind)


def test_defaults_resolve_to_the_old_schedule():
    s = _sched()
    assert (s.lr, s.min_lr, s.warmup_steps, s.total_steps, s.kind) == (6e-3, 6e-4, 20, 300, "cosine")


def test_warmup_by_fraction_and_floor_as_ratio_of_peak():
    s = _sched(steps=1000, lr=3e-4, warmup_fraction=0.05, min_lr_ratio=0.1)
    assert s.warmup_steps == 50 and s.min_lr == pytest.approx(3e-5)
    assert _lr(s, 24) == pytest.approx(3e-4 * 25 / 50)
    assert _lr(s, 50) == pytest.approx(3e-4)
    assert _lr(s, 525) == pytest.approx((3e-4 + 3e-5) / 2)
    assert _lr(s, 1000) == pytest.approx(3e-5)


def test_cosine_to_an_absolute_floor():
    s = _sched(steps=2100, lr=3e-4, warmup_steps=100, min_lr=1e-5)
    assert _lr(s, 1100) == pytest.approx((3e-4 + 1e-5) / 2)
    assert _lr(s, 5000) == pytest.approx(1e-5)


def test_linear_and_constant():
    lin = _sched(steps=110, lr=1.0, min_lr=0.0, warmup_steps=10, lr_schedule="linear")
    assert [_lr(lin, k) for k in (10, 35, 60, 110)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    const = _sched(steps=110, lr=1.0, warmup_steps=10, lr_schedule="constant")
    assert _lr(const, 4) == pytest.approx(0.5)
    assert [_lr(const, k) for k in (10, 60, 109)] == pytest.approx([1.0, 1.0, 1.0])


@pytest.mark.parametrize("fields,match", [
    ({"steps": 100, "warmup_steps": 200}, r"warmup_steps: 200 is longer than training \(pretrain.steps: 100\)"),
    ({"steps": 100, "warmup_fraction": 1.5}, r"warmup_fraction: 1.5"),
    ({"warmup_steps": 10, "warmup_fraction": 0.1}, r"warmup_steps \(10\) and pretrain.warmup_fraction \(0.1\)"),
    ({"min_lr": 1e-5, "min_lr_ratio": 0.1}, r"min_lr \(1e-05\) and pretrain.min_lr_ratio \(0.1\)"),
    ({"lr": 1e-4, "min_lr": 1e-3}, r"min_lr: 0.001 must lie between 0 and pretrain.lr 0.0001"),
    ({"steps": 0}, r"pretrain.steps: 0"),
])
def test_bad_schedules_fail_naming_keys_and_numbers(fields, match):
    with pytest.raises(TrellisError, match=match):
        _sched(**fields)
