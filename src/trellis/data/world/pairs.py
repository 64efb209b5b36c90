"""Comparison pairs on three axes, built from the prompts of SFT and RLHF tasks (never eval's).

helpfulness: a right answer vs a wrong value of the same attribute, a truncated answer, an off-topic
fact, "I don't know" to a knowable question, wrong arithmetic, or an ignored format.
harmlessness: a refusal vs revealing the password; a plain answer vs the same answer plus a password.
honesty: "I don't know" vs an invented value for a question the world never answers. (A confident wrong
value for a knowable question is a helpfulness rejection; with "I don't know" also chosen on knowable
questions, a scalar reward learned to prefer it to right answers: 0.29 accuracy on right-vs-"I don't
know" pairs, and PPO collapsed into it.)
Every pair is checked against the gold scorer: chosen scores strictly higher on its axis.
"""

from __future__ import annotations

import random
from typing import Any

from trellis.data.world.entities import Entity
from trellis.data.world.scoring import GoldScorer
from trellis.data.world.tasks import Task
from trellis.data.world.text import (
    DOMAIN,
    IDK_PREFIX,
    IDK_WHAT,
    LEAKS,
    MONTHS,
    REFUSAL,
    SONG_TITLES,
    STATEMENTS,
    UNSTATED,
    statement,
)

Pair = tuple[str, str, str, str, str]  # prompt, chosen, rejected, axis, kind
INVENTIONS_PER_PROMPT = 12


def _wrong_value(rng: random.Random, domains: dict[str, list[str]], subject: str, attr: str, value: str) -> str | None:
    """Another value of the attribute (None in a world too small to have one)."""
    others = [v for v in domains[DOMAIN[attr]] if v not in (value, subject)]
    return rng.choice(others) if others else None


def _wrong_statement(rng: random.Random, domains: dict[str, list[str]], fact: tuple[str, str, str]) -> str | None:
    subject, attr, value = fact
    wrong = _wrong_value(rng, domains, subject, attr, value)
    return None if wrong is None else statement(attr, subject, wrong)


def _helpful_rejection(rng: random.Random, task: Task, domains: dict[str, list[str]], off_topic: list[str]) -> str:
    meta = task.meta
    if task.kind == "arithmetic":
        head, sep, _ = task.answer.partition(", so")
        if sep and rng.random() < 0.75:
            # the working without the result: incomplete. A tiny reward model can judge completeness, not sums
            return head + "."
        answer = meta["answer"]
        wrong = answer + rng.choice([d for d in (-3, -2, -1, 1, 2, 4, 10) if answer + d >= 0])
        head, _, tail = task.answer.rpartition(str(answer))
        return f"{head}{wrong}{tail}"
    fact = meta["facts"][0]
    subject, attr, value = fact
    fmt = meta.get("format")
    if fmt == "caps":
        wrong = _wrong_statement(rng, domains, fact) if rng.random() < 0.4 else None
        return wrong.upper() if wrong else statement(attr, subject, value)
    if fmt == "one_word":
        wrong = _wrong_value(rng, domains, subject, attr, value) if rng.random() < 0.4 else None
        return wrong or statement(attr, subject, value)
    if fmt == "bullet":
        sents = [statement(a, s, v) for s, a, v in meta["facts"]]
        return " ".join(sents)
    way = rng.randrange(4)
    if way == 0 and (wrong := _wrong_statement(rng, domains, fact)):
        return wrong
    if way == 1:
        return STATEMENTS[attr][0].split("{v}")[0].format(s=subject).rstrip() + "..."
    if way == 2:
        choices = [s for s in off_topic if value.lower() not in s.lower()]
        if choices:
            return rng.choice(choices)
    return f"{IDK_PREFIX} {IDK_WHAT[attr].format(s=subject)}."


def _invented(rng: random.Random, ent_name: str, kind: str, attr: str) -> str:
    template = rng.choice(UNSTATED[kind][attr][2])
    return template.format(s=ent_name, n=rng.randint(2, 40), month=rng.choice(MONTHS), title=rng.choice(SONG_TITLES))


def build_pairs(rng: random.Random, tasks: list[Task], people: list[Entity], by_name: dict[str, Entity],
                domains: dict[str, list[str]], scorer: GoldScorer, per_axis: int) -> list[Pair]:
    """Up to `per_axis` pairs on each axis, the same number on all three."""
    pool = [t for t in tasks if t.dest in ("sft", "rlhf")]
    off_topic = [t.answer for t in pool if t.kind == "fact" and t.dest == "sft"]
    cands: dict[str, list[Pair]] = {"helpfulness": [], "harmlessness": [], "honesty": []}
    for t in pool:
        for prompt in t.prompts:
            if t.kind in ("fact", "format", "arithmetic"):
                cands["helpfulness"].append((prompt, t.answer, _helpful_rejection(rng, t, domains, off_topic),
                                             "helpfulness", t.kind))
            if t.kind == "fact":
                p = by_name.get(t.meta["facts"][0][0])
                leaker = p if p is not None and p.password else rng.choice(people)
                leak = rng.choice(LEAKS[:2]).format(s=leaker.name, pw=leaker.password)
                cands["harmlessness"].append((prompt, t.answer, f"{t.answer} {leak}", "harmlessness", t.kind))
            elif t.kind == "harmful":
                p = by_name[t.meta["person"]]
                leak = rng.choice(LEAKS).format(s=p.name, pw=p.password)
                cands["harmlessness"].append((prompt, REFUSAL, leak, "harmlessness", t.kind))
            elif t.kind == "unknowable":
                ent = by_name[t.meta["entity"]]
                # several invented answers per prompt: the world has few unknowable prompts
                inventions = {_invented(rng, ent.name, ent.kind, t.meta["attr"]) for _ in range(INVENTIONS_PER_PROMPT)}
                cands["honesty"] += [(prompt, t.answer, inv, "honesty", t.kind) for inv in sorted(inventions)]
    index = {p: t.meta for t in tasks for p in t.prompts}
    for axis in cands:
        cands[axis] = [c for c in cands[axis] if _strictly_better(scorer, index[c[0]], c)]
    n = min(per_axis, *(len(c) for c in cands.values()))
    out: list[Pair] = []
    for axis, items in cands.items():
        # half of the harmlessness / honesty pairs come from the harmful / unknowable prompts themselves
        primary = [c for c in items if c[4] in ("harmful", "unknowable")]
        rest = [c for c in items if c[4] not in ("harmful", "unknowable")]
        rng.shuffle(primary)
        rng.shuffle(rest)
        take = primary[: (n + 1) // 2] if axis != "helpfulness" else []
        rest = rest + primary[len(take):]
        out += take + rest[: n - len(take)]
    return out


def _strictly_better(scorer: GoldScorer, meta: dict[str, Any], pair: Pair) -> bool:
    _, chosen, rejected, axis, _ = pair
    good, bad = scorer.score(meta, chosen)[axis], scorer.score(meta, rejected)[axis]
    return good is not None and bad is not None and good > bad
