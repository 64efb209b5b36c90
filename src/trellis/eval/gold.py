"""Gold score: greedy answers to held-out world prompts, judged by the world's own scorer.

The world knows the true answer to every prompt it makes, so this is the ground truth that the reward
model and PPO only approximate (SFT and RLHF report it; eval compares it across models).
"""

from __future__ import annotations

from typing import Any

from trellis.data.chat_template import chat_stop_ids

AXES = ("helpfulness", "harmlessness", "honesty")
N_SAMPLES = 8


def render_chat_prompt(tokenizer: Any, user_text: str) -> list[int]:
    """Token ids of one user turn plus the assistant header, exactly as SFT trained on them."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True
    )
    # transformers 5 returns a BatchEncoding for tokenize=True; older versions a plain list
    if hasattr(ids, "keys") and "input_ids" in ids:
        ids = ids["input_ids"]
    return list(ids)


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """eos ids from generation_config (ChatML: <|im_end|>, <|endoftext|>) plus the tokenizer's eos."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(eos, int):
        ids.append(eos)
    elif eos:
        ids.extend(int(i) for i in eos)
    ids.extend(t for t in chat_stop_ids(tokenizer) if t not in ids)
    return ids


def generate_answers(model: Any, tokenizer: Any, texts: list[str], max_new_tokens: int = 48,
                     batch_size: int = 16, engine: Any = None) -> list[str]:
    """Greedy chat answers to user messages through the project's one engine."""
    from trellis.serving.engine import Engine
    from trellis.serving.sampling import SamplingParams

    engine = engine or Engine(model, tokenizer, max_batch_size=batch_size)
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens,
                            stop_token_ids=stop_token_ids(model, tokenizer))
    prompts = [render_chat_prompt(tokenizer, t) for t in texts]
    was_training = model.training
    model.eval()
    try:
        outs = engine.generate(prompts, params)
    finally:
        model.train(was_training)
    return [out.text.strip() for out in outs]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_responses(world: Any, prompts: list[dict], responses: list[str]) -> dict[str, Any]:
    """Aggregate world.gold_score over (prompt, response) pairs; an axis that is None for a prompt
    (it does not apply to that kind of prompt) is left out of that axis's mean."""
    overall: list[float] = []
    axes: dict[str, list[float]] = {a: [] for a in AXES}
    by_kind: dict[str, dict[str, list[float]]] = {}
    samples: list[dict[str, Any]] = []
    for item, response in zip(prompts, responses, strict=True):
        score = world.gold_score(item["prompt"], response)
        kind = item.get("kind", "all")
        bucket = by_kind.setdefault(kind, {"overall": [], **{a: [] for a in AXES}})
        overall.append(float(score["overall"]))
        bucket["overall"].append(float(score["overall"]))
        for axis in AXES:
            value = score.get(axis)
            if value is not None:
                axes[axis].append(float(value))
                bucket[axis].append(float(value))
        if len(samples) < N_SAMPLES:
            samples.append({"prompt": item["prompt"], "kind": kind, "response": response,
                            "score": {k: (None if v is None else float(v)) for k, v in score.items()}})
    return {
        "gold_score": _mean(overall),
        **{axis: _mean(values) for axis, values in axes.items()},
        "n": len(overall),
        "by_kind": {kind: {"n": len(vals["overall"]), **{k: _mean(v) for k, v in vals.items()}}
                    for kind, vals in sorted(by_kind.items())},
        "samples": samples,
    }


def gold_eval(model: Any, tokenizer: Any, world: Any, prompts: list[dict], max_new_tokens: int = 48,
              batch_size: int = 16, engine: Any = None) -> dict[str, Any]:
    """Greedy answers to `prompts` ({"prompt", "kind"} as World.eval_prompts/rlhf_prompts give them),
    scored by `world.gold_score`.

    Returns {"gold_score", "helpfulness", "harmlessness", "honesty", "n", "by_kind", "samples"}; a
    caller that already holds an Engine for this model passes it as `engine`.
    """
    if not prompts:
        return score_responses(world, [], [])
    responses = generate_answers(model, tokenizer, [p["prompt"] for p in prompts],
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, engine=engine)
    return score_responses(world, prompts, responses)
