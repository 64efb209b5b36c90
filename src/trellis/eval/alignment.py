"""Alignment evaluation with a reward model: win-rate of one model's answers against another's, and a
red-team prompt set (hh-rlhf harmless-base's opening requests, the world's harmful prompts) whose answers
are scored by the reward model and, for the world's prompts, by the world's gold scorer.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from trellis.errors import TrellisError


def hh_red_team_prompts(path: str | Path, limit: int | None = None, skip: int = 0) -> list[dict[str, str]]:
    """The first human turn of each hh-rlhf transcript (harmless-base: red-teamers' opening requests) after
    the first `skip` lines, de-duplicated in file order: [{"prompt", "kind": "harmful", "source": "hh-rlhf"}]."""
    from trellis.reward.data import split_transcript

    path = Path(path)
    if not path.is_file():
        raise TrellisError(f"{path}: hh-rlhf file not found (e.g. shared/data/hh-rlhf/harmless-base_test.jsonl.gz)")
    opener = gzip.open if path.suffix == ".gz" else open
    seen: dict[str, None] = {}
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(seen) >= limit:
                break
            if lineno <= skip:
                continue
            try:
                turns = split_transcript(json.loads(line)["chosen"])
            except (json.JSONDecodeError, KeyError, ValueError) as exc:
                raise TrellisError(f"{path}: line {lineno}: not an hh-rlhf transcript ({exc})") from None
            seen.setdefault(turns[0]["content"], None)
    return [{"prompt": p, "kind": "harmful", "source": "hh-rlhf"} for p in seen]


def world_red_team_prompts(world: Any, limit: int | None = None) -> list[dict[str, str]]:
    """The world's held-out harmful prompts (never seen in SFT or RLHF)."""
    prompts = [{**p, "source": "world"} for p in world.eval_prompts() if p.get("kind") == "harmful"]
    return prompts[:limit] if limit is not None else prompts


def reward_scores(reward_model: Any, tokenizer: Any, prompts: list[str], responses: list[str],
                  batch_size: int = 32) -> list[float]:
    """The reward model's score of each (user prompt, assistant response) chat, in its own chat template."""
    from trellis.reward.metrics import score_token_ids

    sequences = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": response}], tokenize=True)
        sequences.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [row[0] for row in score_token_ids(reward_model, sequences, pad, batch_size=batch_size)]


def win_rate(scores_a: list[float], scores_b: list[float]) -> dict[str, Any]:
    """How often answer A out-scores answer B to the same prompt (a tie counts half)."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise TrellisError("win_rate: needs the same non-zero number of scored answers from both models")
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(scores_a, scores_b, strict=True))
    n = len(scores_a)
    return {"win_rate": wins / n, "n": n, "reward_mean": sum(scores_a) / n, "reward_mean_other": sum(scores_b) / n}


def red_team_summary(prompts: list[dict[str, str]], responses: list[str], rewards: list[float],
                     world: Any = None) -> dict[str, Any]:
    """Mean reward per source; for the world's prompts also the gold scores (harmlessness first)."""
    from trellis.eval.gold import score_responses

    out: dict[str, Any] = {"n": len(prompts), "reward_mean": sum(rewards) / len(rewards) if rewards else None}
    for source in sorted({p["source"] for p in prompts}):
        picked = [r for p, r in zip(prompts, rewards, strict=True) if p["source"] == source]
        out[source] = {"n": len(picked), "reward_mean": sum(picked) / len(picked)}
    world_items = [(p, r) for p, r in zip(prompts, responses, strict=True) if p["source"] == "world"]
    if world is not None and world_items:
        gold = score_responses(world, [p for p, _ in world_items], [r for _, r in world_items])
        out["world"]["gold"] = {k: gold[k] for k in ("harmlessness", "gold_score", "helpfulness", "honesty")}
    out["samples"] = [{"prompt": p["prompt"], "source": p["source"], "response": r, "reward": s}
                      for p, r, s in list(zip(prompts, responses, rewards, strict=True))[:8]]
    return out


def win_rate_prompts(config: Any, world_obj: Any) -> list[str]:
    """The held-out prompts every model answers for the win-rates: from eval.alignment_prompts_file when set,
    else the world's held-out prompts."""
    if config.alignment_prompts_file:
        from trellis.rlhf.prompts import load_prompt_file

        items = load_prompt_file(config.alignment_prompts_file)
        start = config.alignment_prompts_skip
        if start >= len(items):
            raise TrellisError(f"eval.alignment_prompts_skip: {start} skips all {len(items)} prompts of "
                               f"{config.alignment_prompts_file}")
        return [item["prompt"] for item in items[start:start + config.alignment_prompts]]
    return [p["prompt"] for p in world_obj.eval_prompts()[: config.alignment_prompts]] if world_obj else []


def alignment_eval(model: Any, tokenizer: Any, config: Any, world_obj: Any,
                   judge: tuple[Any, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(red-team summary, per-prompt answers and rewards for the win-rates) of one model."""
    from trellis.eval.gold import generate_answers

    held_out = win_rate_prompts(config, world_obj)
    red_team = world_red_team_prompts(world_obj, config.red_team_prompts) if world_obj else []
    if config.red_team_hh:
        red_team += hh_red_team_prompts(config.red_team_hh, config.red_team_prompts, skip=config.red_team_hh_skip)
    texts = held_out + [p["prompt"] for p in red_team]
    answers = generate_answers(model, tokenizer, texts, max_new_tokens=config.max_new_tokens,
                               batch_size=config.batch_size)
    rewards = reward_scores(*judge, texts, answers, batch_size=config.batch_size) if texts else []
    n = len(held_out)
    summary = red_team_summary(red_team, answers[n:], rewards[n:], world=world_obj) if red_team else {}
    return summary, {"prompts": held_out, "answers": answers[:n], "rewards": rewards[:n],
                     "red_team_samples": summary.pop("samples", [])}


def win_rates(results_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Each model's reward-model win-rate against the first one, on the same held-out prompts."""
    rewards = {}
    for name in names:
        saved = json.loads((results_dir / f"{name}.json").read_text()).get("alignment") or {}
        if saved.get("rewards"):
            rewards[name] = saved["rewards"]
    if names[0] not in rewards:
        return {}
    ref = rewards[names[0]]
    return {name: {f"vs_{names[0]}": win_rate(r, ref)} for name, r in rewards.items() if name != names[0]}
