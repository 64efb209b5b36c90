import torch

from trellis.pretrain.monitors import ActivationStats, Callbacks, LoopContext, StepInfo, cpu_peak_tflops


def _model():
    from transformers import LlamaForCausalLM

    from trellis.config.pretrain import ModelSpec
    from trellis.models.presets import build_model_config

    torch.manual_seed(0)
    return LlamaForCausalLM(build_model_config(ModelSpec(preset="micro"), 100))


def _ctx(model):
    return LoopContext(model=model, optimizer=None, device=torch.device("cpu"), precision="fp32", log_every=1,
                       total_steps=10, flops_per_token=lambda n: 1.0)


def test_activation_hooks_measure_block_outputs_and_go_away():
    model = _model()
    act = ActivationStats(every=2)
    ctx, cbs = _ctx(model), Callbacks([act])
    ids = torch.randint(0, 100, (2, 16))
    def hooks():
        return [len(layer._forward_hooks) for layer in model.model.layers]

    before = hooks()
    cbs.step_begin(ctx, 1)  # not an activation step: no hooks
    assert hooks() == before
    cbs.step_begin(ctx, 2)
    assert hooks() == [n + 1 for n in before]
    ours = [h.id for h in act._handles]
    out = model(input_ids=ids, output_hidden_states=True)
    cbs.grads(ctx, 2)
    assert not any(i in layer._forward_hooks for layer in model.model.layers for i in ours)
    stats = cbs.step_end(ctx, StepInfo(2, 32, 0.1, 16, 0.0, 0.0, True))
    # hidden_states[i + 1] is the output of block i (the last one before the final norm)
    for i in range(len(model.model.layers) - 1):
        h = out.hidden_states[i + 1].detach()
        assert stats[f"act_rms.{i}"] == torch.tensor(float(h.pow(2).mean().sqrt())).item()
        assert stats[f"act_max.{i}"] == float(h.abs().max())
    assert cbs.step_end(ctx, StepInfo(3, 32, 0.1, 16, 0.0, 0.0, True)) == {}


def test_cpu_peak_probe_is_plausible():
    peak = cpu_peak_tflops("fp32", size=256, repeats=2)
    assert 1e-4 < peak < 50
