import json

import pytest
import torch

from trellis.config import WorldConfig
from trellis.errors import TrellisError
from trellis.rlhf import stage


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_a_few_steps_write_the_ppo_run_layout(tmp_path, make_config, tiny_dirs, algorithm):
    from transformers import AutoModelForCausalLM

    config = make_config(algorithm=algorithm, steps=2, rollout_batch_size=4, minibatch_size=4, num_generations=2,
                         max_new_tokens=6, ppo_epochs=1, lr=1e-2, kl_coef=0.05)
    final = stage.run(config, WorldConfig(), tmp_path)
    assert final == tmp_path / "rlhf" / "final"
    records = [json.loads(x) for x in (tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for key in ("reward_mean", "reward_std", "kl_mean", "response_length"):
        assert key in records[0], key
    summary = json.loads((tmp_path / "rlhf" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["algorithm"] == algorithm and summary["episodes"] == 8
    assert summary["reward_mean_initial"] == records[0]["reward_mean"] and summary["kl_final"] is not None
    assert (tmp_path / "rlhf" / "config.yaml").exists()
    trained = AutoModelForCausalLM.from_pretrained(final)
    start = AutoModelForCausalLM.from_pretrained(tiny_dirs[0])
    assert not torch.equal(trained.lm_head.weight, start.lm_head.weight)


def test_reward_function_is_the_ppo_reward(tiny_dirs, tokenizer):
    from trellis.checkpoint import load_reward_model
    from trellis.rlhf.rollout import reward_scores
    from trellis.rlhf.trl_algorithms import make_reward_function

    reward = load_reward_model(tiny_dirs[1]).eval()
    fn = make_reward_function(reward, tokenizer, torch.device("cpu"), batch_size=2)
    prompts = [[{"role": "user", "content": "Who is the king?"}], [{"role": "user", "content": "Speak."}]]
    completions = [[{"role": "assistant", "content": " Aye. "}], [{"role": "assistant", "content": "No."}]]
    expected = reward_scores(reward, tokenizer, ["Who is the king?", "Speak."], ["Aye.", "No."], torch.device("cpu"))
    assert fn(prompts, completions) == pytest.approx(expected.tolist())


def test_group_size_must_divide_the_batch(tmp_path, make_config):
    with pytest.raises(TrellisError, match="rlhf.num_generations"):
        stage.run(make_config(algorithm="grpo", rollout_batch_size=4, num_generations=3), WorldConfig(), tmp_path)
