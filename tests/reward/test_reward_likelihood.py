import json

import pytest
import torch
from safetensors.torch import load_file
from test_reward_stage import _config

from trellis.checkpoint import load_causal_lm, load_reward_model, load_tokenizer
from trellis.config import RewardConfig, WorldConfig
from trellis.errors import TrellisError
from trellis.reward import stage as reward_stage
from trellis.reward.likelihood import KEY, answer_mask, attach_likelihood_term, response_header_ids
from trellis.rlhf.rollout import reward_scores


def test_answer_mask_takes_the_tokens_after_the_last_header():
    header = [7, 8]
    ids = torch.tensor([[1, 7, 8, 2, 7, 8, 3, 4, 0],    # two headers: the answer follows the last
                        [7, 8, 5, 6, 9, 9, 9, 9, 9],    # one header, then padding
                        [1, 2, 3, 4, 5, 6, 7, 9, 9]])   # no header: no answer
    mask = torch.tensor([[1] * 8 + [0], [1] * 5 + [0] * 4, [1] * 7 + [0] * 2])
    got = answer_mask(ids, mask, header)
    assert got[0].nonzero().flatten().tolist() == [6, 7]
    assert got[1].nonzero().flatten().tolist() == [2, 3, 4]
    assert not got[2].any()


def _causal_answer_logprob(lm, tokenizer, prompt: str, answer: str) -> float:
    turn = [{"role": "user", "content": prompt}]
    start = len(tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=True, return_dict=False))
    ids = tokenizer.apply_chat_template(turn + [{"role": "assistant", "content": answer}], tokenize=True,
                                        return_dict=False)
    ids = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logp[start - 1:].mean())


def test_reward_is_head_plus_alpha_times_the_causal_lms_mean_answer_logprob(tiny_chat_checkpoint, tmp_path):
    """Attached to a reward model initialised from a causal LM, the term is alpha x that LM's own mean
    log-probability of the answer's tokens (everything after the assistant header, im_end included)."""
    tokenizer = load_tokenizer(tiny_chat_checkpoint)
    model = reward_stage.load_reward_backbone(tiny_chat_checkpoint, tokenizer.pad_token_id)
    torch.nn.init.zeros_(model.score.weight)  # the head scores 0: the reward is the term alone
    attach_likelihood_term(model, response_header_ids(tokenizer), alpha=0.5)
    lm = load_causal_lm(tiny_chat_checkpoint)
    prompts, answers = ["What is two?", "Name a colour."], ["Two is a number.", "Blue, or maybe a very long red."]
    with torch.no_grad():
        got = reward_scores(model, tokenizer, prompts, answers, torch.device("cpu"))
    expected = [0.5 * _causal_answer_logprob(lm, tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    assert got.tolist() == pytest.approx(expected, abs=1e-4)


def test_reward_stage_with_likelihood_term_saves_loads_and_resumes(tiny_chat_checkpoint, tmp_path):
    from test_reward_stage import BAD, GOOD

    rows = [{"prompt": f"Question {i}?", "chosen": GOOD[i % 3], "rejected": BAD[i % 3]} for i in range(96)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "run"
    config = _config(tiny_chat_checkpoint, data, likelihood_term=True, likelihood_alpha=0.5, max_steps=6,
                     save_steps=3)
    final = reward_stage.run(config, WorldConfig(), root)
    saved = json.loads((final / "config.json").read_text())[KEY]
    tokenizer = load_tokenizer(final)
    assert saved["response_header"] == response_header_ids(tokenizer)
    assert saved["alpha"] != 0.5 and abs(saved["alpha"] - 0.5) < 0.1  # trained from its configured start
    # the weight is in the trainer's checkpoints, so a resumed run continues from the learned alpha
    state = load_file(root / "reward" / "checkpoints" / "checkpoint-6" / "model.safetensors")
    assert float(state["likelihood_term.alpha"]) == pytest.approx(saved["alpha"])

    model = load_reward_model(final)
    assert float(model.likelihood_term.alpha.detach()) == pytest.approx(saved["alpha"])
    summary = json.loads((root / "reward" / "summary.json").read_text())
    assert summary["accuracy"]["overall"] >= 0.9
    # the loaded model scores as the trained one did on the held-out pairs
    with torch.no_grad():
        scores = reward_scores(model, tokenizer, ["Question 1?", "Question 1?"], [GOOD[1], BAD[1]],
                               torch.device("cpu"))
    assert scores[0] > scores[1]

    resumed = reward_stage.run(config.model_copy(update={"max_steps": 9}), WorldConfig(), root)
    summary = json.loads((root / "reward" / "summary.json").read_text())
    assert summary["resumed_from"].endswith("checkpoint-6") and summary["steps"] == 9
    assert json.loads((resumed / "config.json").read_text())[KEY]["alpha"] != saved["alpha"]


def test_likelihood_term_needs_one_head_and_tied_embeddings(tiny_chat_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="likelihood_term: applies to a one-head reward model"):
        RewardConfig(likelihood_term=True, heads=["helpfulness", "harmlessness"])
    tokenizer = load_tokenizer(tiny_chat_checkpoint)
    model = reward_stage.load_reward_backbone(tiny_chat_checkpoint, tokenizer.pad_token_id)
    model.config.tie_word_embeddings = False
    with pytest.raises(TrellisError, match="reward.likelihood_term: the likelihood term needs tied"):
        attach_likelihood_term(model, response_header_ids(tokenizer))
