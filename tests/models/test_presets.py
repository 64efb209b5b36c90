import pytest

from trellis.config.pretrain import ModelSpec
from trellis.errors import TrellisError
from trellis.models.flops import count_params, shape_from_hf_config, train_flops_per_token
from trellis.models.presets import PRESETS, build_model_config, llama_config, resolve_shape


def _numel(config) -> int:
    from transformers import LlamaForCausalLM

    return sum(p.numel() for p in LlamaForCausalLM(config).parameters())


@pytest.mark.parametrize("preset", ["micro", "tiny"])
def test_param_count_matches_the_instantiated_model(preset):
    config = build_model_config(ModelSpec(preset=preset), 512, pad_token_id=3, eos_token_id=[2, 0])
    assert config.num_key_value_heads < config.num_attention_heads  # GQA
    assert config.hidden_act == "silu" and config.tie_word_embeddings
    assert _numel(config) == count_params(PRESETS[preset], 512).total


def test_untied_override_counts_the_head():
    spec = ModelSpec(preset="micro", tie_embeddings=False, num_layers=3)
    config = build_model_config(spec, 300)
    shape = resolve_shape(spec)
    assert config.num_hidden_layers == 3 and not config.tie_word_embeddings
    assert _numel(config) == count_params(shape, 300).total
    assert count_params(shape, 300).lm_head == 300 * shape.hidden_size


def test_tiny_is_quickstart_sized():
    total = count_params(PRESETS["tiny"], 2048).total
    assert 0.8e6 <= total <= 3e6


@pytest.mark.parametrize("name,billions", [("llama3.2-1b", 1.236), ("llama3.1-8b", 8.030), ("llama3.1-405b", 405.85)])
def test_reference_shapes_match_published_sizes(name, billions):
    assert count_params(PRESETS[name]).total / 1e9 == pytest.approx(billions, rel=1e-3)


def test_reference_config_is_built_without_weights():
    import torch
    from transformers import LlamaForCausalLM

    config = llama_config(PRESETS["llama3.2-1b"])
    assert config.rope_parameters["rope_type"] == "llama3"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == count_params(PRESETS["llama3.2-1b"]).total
    shape, vocab = shape_from_hf_config(config)
    assert vocab == 128256 and count_params(shape, vocab).total == count_params(PRESETS["llama3.2-1b"]).total


def test_flops_per_token_is_6n_plus_attention():
    shape = PRESETS["llama3.1-8b"]
    p = count_params(shape)
    n = p.attention + p.mlp + p.lm_head
    attn = 6 * shape.num_layers * 4096 * shape.hidden_size
    assert train_flops_per_token(shape, 4096) == pytest.approx(6 * n + attn)
    # 8B at 4k context: the familiar ~6 * 8e9 plus a few percent for attention
    assert 4.5e10 < train_flops_per_token(shape, 4096) < 5.5e10


def test_bad_preset_and_bad_shape_fail_naming_the_key():
    with pytest.raises(TrellisError, match="model.preset"):
        resolve_shape(ModelSpec(preset="gpt5"))
    with pytest.raises(TrellisError, match="num_kv_heads"):
        resolve_shape(ModelSpec(preset="micro", num_kv_heads=3))
