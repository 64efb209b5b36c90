"""Instruction tasks (a prompt's phrasings, its reference answer, what the gold scorer needs) and their split.

Kinds: fact, arithmetic, format, harmful, unknowable. A task is the unit of the split: all of its
phrasings go to one of sft / rlhf / eval. A fact (entity, attribute) that is held out is held out for
every task whose answer states it (arithmetic and format tasks included), so SFT never teaches it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from trellis.data.world.entities import Entity
from trellis.data.world.text import (
    ATTR_NOUNS,
    ATTRS,
    FORMAT_BULLETS,
    FORMAT_CAPS,
    FORMAT_ONE_WORD,
    HARMFUL_PROMPTS,
    IDK_PREFIX,
    QUESTIONS,
    REFUSAL,
    UNSTATED,
    join_and,
    possessive,
    statement,
)

KINDS = ("fact", "arithmetic", "format", "harmful", "unknowable")
DESTS = ("sft", "rlhf", "eval")
_RANK = {d: i for i, d in enumerate(DESTS)}
# share of harmful / unknowable prompts SFT sees: enough that the policy can sample a refusal at all,
# little enough that RLHF has something to improve
SENSITIVE_SFT_SHARE = 0.22


@dataclass
class Task:
    kind: str
    prompts: list[str]
    answer: str
    meta: dict[str, Any]  # what the gold scorer reads
    facts: list[tuple[str, str]] = field(default_factory=list)  # (entity name, attribute) the answer states
    dest: str = "sft"
    eval_prompt: str = ""


def _fact_meta(kind: str, ent: Entity, attrs: list[str], **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "facts": [(ent.name, a, ent.facts[a]) for a in attrs], **extra}


def fact_tasks(entities: list[Entity]) -> list[Task]:
    return [Task("fact", [q.format(s=e.name) for q in QUESTIONS[a]], statement(a, e.name, e.facts[a]),
                 _fact_meta("fact", e, [a]), [(e.name, a)])
            for e in entities for a in ATTRS[e.kind]]


def format_tasks(rng: random.Random, entities: list[Entity]) -> list[Task]:
    """One capital-letters or one-word task per fact, and two bullet-list tasks per entity."""
    tasks = []
    for e in entities:
        for a in ATTRS[e.kind]:
            fmt = "caps" if a == "known_for" or rng.random() < 0.5 else "one_word"
            suffixes = FORMAT_CAPS if fmt == "caps" else FORMAT_ONE_WORD
            prompts = [f"{QUESTIONS[a][i].format(s=e.name)} {rng.choice(suffixes)}" for i in (0, 1)]
            value = e.facts[a]
            answer = statement(a, e.name, value).upper() if fmt == "caps" else value[:1].upper() + value[1:]
            tasks.append(Task("format", prompts, answer, _fact_meta("format", e, [a], format=fmt), [(e.name, a)]))
        attrs = list(ATTRS[e.kind])
        for _ in range(2):
            chosen = sorted(rng.sample(attrs, min(len(attrs), rng.choice((2, 3)))), key=attrs.index)
            x = f"{possessive(e.kind, e.name)} {join_and([ATTR_NOUNS[a] for a in chosen])}"
            prompts = [t.format(x=x) for t in rng.sample(FORMAT_BULLETS, 2)]
            answer = "\n".join(f"- {statement(a, e.name, e.facts[a])}" for a in chosen)
            tasks.append(Task("format", prompts, answer, _fact_meta("format", e, chosen, format="bullet"),
                              [(e.name, a) for a in chosen]))
    return tasks


def _legs_sum(rng: random.Random, people: list[Entity], creatures: list[Entity], by: dict[str, Entity]) -> Task:
    c1, c2 = rng.sample(creatures, 2)
    n1, n2 = int(c1.facts["legs"]), int(c2.facts["legs"])
    return Task("arithmetic", [f"How many legs do a {c1.name} and a {c2.name} have together?",
                               f"What is the total number of legs of a {c1.name} and a {c2.name}?"],
                f"A {c1.name} has {n1} legs and a {c2.name} has {n2} legs, so together they have {n1 + n2} legs.",
                {"kind": "arithmetic", "answer": n1 + n2}, [(c1.name, "legs"), (c2.name, "legs")])


def _age_pair(rng: random.Random, people: list[Entity], creatures: list[Entity], by: dict[str, Entity]) -> Task:
    p, q = sorted(rng.sample(people, 2), key=lambda e: -int(e.facts["age"]))
    a, b = int(p.facts["age"]), int(q.facts["age"])
    facts = [(p.name, "age"), (q.name, "age")]
    work = f"{p.name} is {a} years old and {q.name} is {b} years old"
    if a > b and rng.random() < 0.6:
        return Task("arithmetic", [f"How much older is {p.name} than {q.name}?",
                                   f"By how many years is {p.name} older than {q.name}?"],
                    f"{work}, so {p.name} is {a - b} years older than {q.name}.",
                    {"kind": "arithmetic", "answer": a - b}, facts)
    return Task("arithmetic", [f"What is the total age of {p.name} and {q.name}?",
                               f"How many years old are {p.name} and {q.name} together?"],
                f"{work}, so together they are {a + b} years old.", {"kind": "arithmetic", "answer": a + b}, facts)


def _age_future(rng: random.Random, people: list[Entity], creatures: list[Entity], by: dict[str, Entity]) -> Task:
    p, k = rng.choice(people), rng.randint(2, 20)
    a = int(p.facts["age"])
    return Task("arithmetic", [f"How old will {p.name} be in {k} years?", f"In {k} years, how old will {p.name} be?"],
                f"{p.name} is {a} years old, so in {k} years {p.name} will be {a + k} years old.",
                {"kind": "arithmetic", "answer": a + k}, [(p.name, "age")])


def _pet_legs(rng: random.Random, people: list[Entity], creatures: list[Entity], by: dict[str, Entity]) -> Task:
    p = rng.choice(people)
    pet = by[p.facts["pet"]]
    n = int(pet.facts["legs"])
    return Task("arithmetic", [f"How many legs does {p.name}'s pet have?", f"How many legs does the pet of {p.name} walk on?"],
                f"{p.name} keeps a {pet.name} as a pet, and a {pet.name} has {n} legs, so {p.name}'s pet has {n} legs.",
                {"kind": "arithmetic", "answer": n}, [(p.name, "pet"), (pet.name, "legs")])


def arithmetic_tasks(rng: random.Random, people: list[Entity], creatures: list[Entity], by: dict[str, Entity],
                     n: int) -> list[Task]:
    makers = []
    if len(creatures) >= 2:
        makers += [_legs_sum, _legs_sum]
    if len(people) >= 2:
        makers += [_age_pair, _age_pair]
    if people and creatures:
        makers += [_age_future, _pet_legs]
    found: dict[str, Task] = {}
    for _ in range(20 * n):
        if len(found) >= n or not makers:
            break
        task = rng.choice(makers)(rng, people, creatures, by)
        found.setdefault(task.prompts[0], task)
    return list(found.values())


def harmful_tasks(people: list[Entity]) -> list[Task]:
    return [Task("harmful", [t.format(s=p.name, f=p.facts["friend"])], REFUSAL, {"kind": "harmful", "person": p.name})
            for p in people for t in HARMFUL_PROMPTS]


def unknowable_tasks(entities: list[Entity]) -> list[Task]:
    tasks = []
    for e in entities:
        for attr, (questions, what, _) in UNSTATED[e.kind].items():
            answer = f"{IDK_PREFIX} {what.format(s=e.name)}."
            tasks += [Task("unknowable", [q.format(s=e.name)], answer, {"kind": "unknowable", "entity": e.name, "attr": attr})
                      for q in questions]
    return tasks


def dedupe(tasks: list[Task]) -> list[Task]:
    """A prompt text belongs to the first task that makes it (the gold index is keyed by text)."""
    seen: set[str] = set()
    out = []
    for t in tasks:
        t.prompts = [p for p in t.prompts if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]
        if t.prompts:
            out.append(t)
    return out


def _held(rng: random.Random) -> str:
    return "rlhf" if rng.random() < 0.5 else "eval"


def _ensure_coverage(rng: random.Random, tasks: list[Task], fact_dest: dict[tuple[str, str], str]) -> None:
    """Tiny worlds: give every destination at least one task of this kind when the kind has three."""
    for dest in DESTS:
        if any(t.dest == dest for t in tasks) or len(tasks) < 3:
            continue
        counts = {d: sum(t.dest == d for t in tasks) for d in DESTS}
        movable = [t for t in tasks if counts[t.dest] >= 2
                   and (dest != "sft" or all(fact_dest.get(f, "sft") == "sft" for f in t.facts))]
        if movable:
            rng.choice(movable).dest = dest


def split_tasks(rng: random.Random, tasks: list[Task], heldout_fraction: float) -> None:
    """Set each task's dest (and the one phrasing eval asks)."""
    by_kind = {k: [t for t in tasks if t.kind == k] for k in KINDS}
    for t in by_kind["fact"]:
        t.dest = _held(rng) if rng.random() < heldout_fraction else "sft"
    _ensure_coverage(rng, by_kind["fact"], {})
    fact_dest = {t.facts[0]: t.dest for t in by_kind["fact"]}
    for kind in ("arithmetic", "format"):
        for t in by_kind[kind]:
            base = max((fact_dest.get(f, "sft") for f in t.facts), key=_RANK.__getitem__, default="sft")
            t.dest = _held(rng) if base == "sft" and rng.random() < heldout_fraction else base
        _ensure_coverage(rng, by_kind[kind], fact_dest)
    for kind in ("harmful", "unknowable"):
        for t in by_kind[kind]:
            t.dest = "sft" if rng.random() < SENSITIVE_SFT_SHARE else _held(rng)
        _ensure_coverage(rng, by_kind[kind], fact_dest)
    for t in tasks:
        t.eval_prompt = rng.choice(t.prompts)
