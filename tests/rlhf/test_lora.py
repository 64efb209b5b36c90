import json

import pytest
import torch
from rlhf_helpers import run_killed_after_step

from trellis.config import WorldConfig
from trellis.config.rlhf import RLHFLoRA
from trellis.errors import TrellisError
from trellis.rlhf import stage
from trellis.rlhf.rollout import response_logprobs
from trellis.rlhf.trainer import PPOTrainer

LORA = RLHFLoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj", "up_proj"])


def test_reference_is_the_frozen_initial_policy(tiny_dirs, tokenizer, prompt_texts, make_config):
    from trellis.checkpoint import load_causal_lm, load_reward_model
    from trellis.rlhf.lora import add_lora

    policy_dir, reward_dir = tiny_dirs
    config = make_config(lora=LORA, lr=2e-2, rollout_batch_size=4, minibatch_size=4)
    policy = add_lora(load_causal_lm(policy_dir), LORA)
    trainer = PPOTrainer(config, policy, None, load_reward_model(reward_dir), load_reward_model(reward_dir),
                         tokenizer, [{"prompt": p} for p in prompt_texts], torch.device("cpu"))
    assert all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
    for _ in range(2):
        trainer.train_step()
    batch = trainer.rollout()

    frozen = load_causal_lm(policy_dir).eval()
    with torch.no_grad():
        expected, _ = response_logprobs(frozen, batch.sequences, config.temperature)
    assert torch.allclose(batch.ref_logprobs, expected, atol=1e-5)
    # the adapters did train: the policy is no longer its reference
    assert (batch.logprobs - expected).abs().max() > 1e-3
    assert torch.equal(policy.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight,
                       frozen.model.layers[0].mlp.up_proj.weight)


def test_lora_stage_exports_a_merged_checkpoint_and_resumes(tmp_path, make_config, tiny_dirs, monkeypatch):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config = make_config(lora=LORA, lr=2e-2, steps=3, save_every=2)
    straight = stage.run(config, WorldConfig(), tmp_path / "a")
    assert not (straight / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(straight)
    start = AutoModelForCausalLM.from_pretrained(tiny_dirs[0])
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, start.model.layers[0].self_attn.q_proj.weight)
    assert torch.equal(model.model.layers[0].self_attn.k_proj.weight, start.model.layers[0].self_attn.k_proj.weight)
    assert (tmp_path / "a" / "rlhf" / "checkpoints" / "step-0000002" / "policy" / "adapter_config.json").exists()

    run_killed_after_step(config, tmp_path / "b", monkeypatch, step=2)
    resumed = stage.run(config, WorldConfig(), tmp_path / "b")
    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    a = [json.loads(x)["reward_mean"] for x in (tmp_path / "a" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["reward_mean"] for x in (tmp_path / "b" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_unknown_lora_target_names_the_key(tmp_path, make_config):
    bad = RLHFLoRA(r=4, alpha=8, target_modules=["c_attn"])
    with pytest.raises(TrellisError, match="rlhf.lora.target_modules"):
        stage.run(make_config(lora=bad), WorldConfig(), tmp_path)
