import pytest
import torch

from trellis.config.pretrain import CurriculumSpec, PretrainConfig
from trellis.errors import TrellisError
from trellis.pretrain.batching import (
    check_curriculum,
    curriculum_length,
    cut_windows,
    loss_weights,
    micro_batches,
    plan_batch,
)


def _cfg(**fields):
    return PretrainConfig.model_validate(fields)


def test_default_batch_is_one_micro_batch():
    plan = plan_batch(_cfg())
    assert (plan.global_batch_size, plan.micro_batch_size, plan.accumulation_steps) == (16, 16, 1)


@pytest.mark.parametrize("world,accum", [(1, 16), (2, 8), (8, 2)])
def test_global_batch_is_the_same_on_any_number_of_devices(world, accum):
    plan = plan_batch(_cfg(seq_len=8192, global_batch_tokens=8192 * 64, micro_batch_size=4), world)
    assert plan.global_batch_size == 64 and plan.accumulation_steps == accum
    assert plan.micro_batch_size * plan.accumulation_steps * world == 64
    assert plan.tokens_per_step == 8192 * 64
    # the micro-batches of all ranks cover the global batch exactly once, in order
    batch = torch.arange(64).unsqueeze(1).expand(64, 3)
    rows = torch.cat([m for r in range(world) for m in micro_batches(batch, plan, r)])
    assert torch.equal(rows, batch)
    assert all(m.shape[0] == 4 for m in micro_batches(batch, plan, world - 1))


def test_indivisible_batch_names_the_numbers():
    with pytest.raises(TrellisError, match=r"global_batch_size: 30 sequences per step is not divisible by "
                                           r"pretrain.micro_batch_size 4 x 2 device\(s\) = 8"):
        plan_batch(_cfg(global_batch_size=30, micro_batch_size=4), 2)
    with pytest.raises(TrellisError, match=r"global_batch_tokens: 1000 is not a multiple of pretrain.seq_len 128"):
        plan_batch(_cfg(global_batch_tokens=1000))
    with pytest.raises(TrellisError, match="both set"):
        plan_batch(_cfg(global_batch_tokens=1024, global_batch_size=8))


def test_loss_weights_are_token_shares():
    assert loss_weights([10, 30], 40, 1) == pytest.approx([0.25, 0.75])
    # two devices: DDP averages, so each device's weights sum to its share times two
    assert sum(loss_weights([10, 10], 80, 2)) == pytest.approx(0.5)


def test_accumulation_gives_the_gradient_of_one_big_batch():
    from transformers import LlamaForCausalLM

    from trellis.config.pretrain import ModelSpec
    from trellis.models.presets import build_model_config
    from trellis.pretrain.step import train_step

    torch.manual_seed(0)
    model = LlamaForCausalLM(build_model_config(ModelSpec(preset="micro"), 100))
    batch = torch.randint(0, 100, (8, 17))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def grads_of(batches):
        seen = {}
        res = train_step(model, batches, opt, precision="fp32", grad_clip=1e9, global_tokens=8 * 16,
                         on_grads=lambda: seen.update({n: p.grad.clone() for n, p in model.named_parameters()}))
        return res.loss, seen

    loss_one, one = grads_of([batch])
    loss_acc, acc = grads_of(list(batch.split(2)))
    assert loss_acc == pytest.approx(loss_one, rel=1e-5)
    for name in one:
        torch.testing.assert_close(acc[name], one[name], rtol=1e-4, atol=1e-7)
    # and it is not the plain sum of micro-batch means (which would be 4x)
    assert not torch.allclose(acc["model.norm.weight"] * 4, one["model.norm.weight"])


def test_curriculum_lengths_rise_snapped_and_keep_tokens():
    spec = CurriculumSpec(start=2048, fraction=0.1, multiple=256)
    lengths = [curriculum_length(s, 1000, spec, 8192) for s in range(1000)]
    assert lengths[0] == 2048 and lengths[99] == 4096 and lengths[100] == 8192 and lengths[-1] == 8192
    assert set(lengths) == {2048, 4096, 8192}  # snapped to multiples of 256 that divide 8192
    assert lengths == sorted(lengths)
    assert lengths.index(4096) == 34  # 2048 + 6144 * 34/100 = 4136.96 is the first target >= 4096
    # a 128-token window schedule with multiple 16: every length divides 128
    small = [curriculum_length(s, 100, CurriculumSpec(start=32, fraction=0.5, multiple=16), 128) for s in range(100)]
    assert small[0] == 32 and small[49] == 64 and small[50] == 128 and all(128 % n == 0 for n in small)
    batch = torch.arange(4 * 129).reshape(4, 129)
    cut = cut_windows(batch, 32)
    assert cut.shape == (16, 33) and cut[:, 1:].numel() == batch[:, 1:].numel()
    assert torch.equal(cut[0], batch[0, :33]) and torch.equal(cut[1], batch[0, 32:65])
    assert curriculum_length(5, 100, None, 128) == 128


def test_bad_curriculum_fails():
    with pytest.raises(TrellisError, match="multiple: 100 must divide both start 2048 and seq_len 8192"):
        check_curriculum(CurriculumSpec(start=2048, multiple=100), 8192)
    with pytest.raises(TrellisError, match="start: 9000"):
        check_curriculum(CurriculumSpec(start=9000), 8192)
