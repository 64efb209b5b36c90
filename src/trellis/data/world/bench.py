"""Benchmark items in the formats of the real releases: HellaSwag jsonl, MMLU csv rows, TruthfulQA mc_task.

HellaSwag: a context of true sentences and the start of another ("Borin works as a"); four endings, one
true, the distractors other values of the attribute (a myth's false value among them when there is one).
ctx_b starts with the subject and has no other capital, since lm-eval capitalises it.
MMLU: one question per fact (and two-hop questions about a person's friend and pet), four choices, the
answer letter cycling through A-D so that the letters are balanced.
TruthfulQA: two questions per planted myth; mc1 lists the truth first, then the myth, then other false
values; mc2 several true and false phrasings.
"""

from __future__ import annotations

import random
from typing import Any

from trellis.data.world.entities import Entity
from trellis.data.world.text import ATTRS, DOMAIN, QUESTIONS, STATEMENTS, clause, statement

LETTERS = "ABCD"
_ACTIVITY = {"person": "People of the world", "place": "Towns of the world", "creature": "Creatures of the world"}


def _distractors(rng: random.Random, domains: dict[str, list[str]], ent: Entity, attr: str, k: int = 3) -> list[str] | None:
    pool = [v for v in domains[DOMAIN[attr]] if v not in (ent.facts[attr], ent.name)]
    if len(pool) < k:
        return None
    myth = ent.myths.get(attr)
    first = [myth] if myth in pool else []
    return first + rng.sample([v for v in pool if v not in first], k - len(first))


def hellaswag_items(rng: random.Random, entities: list[Entity], domains: dict[str, list[str]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for ent in entities:
        attrs = ATTRS[ent.kind]
        for attr in attrs:
            templates = []
            for t in STATEMENTS[attr]:
                prefix, sep, suffix = t.partition("{v}")
                ctx_b = prefix.format(s=ent.name).strip()
                if sep and ctx_b and ctx_b.capitalize() == ctx_b and "{s}" not in suffix:
                    templates.append((ctx_b, suffix))
            if not templates:
                continue
            for ctx_b, suffix in rng.sample(templates, min(len(templates), 1 + (rng.random() < 0.5))):
                wrong = _distractors(rng, domains, ent, attr)
                if wrong is None:
                    continue
                others = [a for a in attrs if a != attr]
                ctx_a = statement(others[0], ent.name, ent.facts[others[0]], rng.randrange(4)) if others else ""
                if len(others) > 1:
                    a2 = rng.choice(others[1:])
                    ctx_a = f"{ctx_a} {statement(a2, ent.name, ent.facts[a2], rng.randrange(4))}"
                endings = [v + suffix for v in wrong]
                label = rng.randrange(4)
                endings.insert(label, ent.facts[attr] + suffix)
                items.append({
                    "ind": len(items), "activity_label": _ACTIVITY[ent.kind], "ctx_a": ctx_a, "ctx_b": ctx_b,
                    "ctx": f"{ctx_a} {ctx_b}".strip(), "split": "val", "split_type": "indomain", "label": label,
                    "endings": endings, "source_id": f"world~{ent.kind}-{ent.name.lower()}-{attr}",
                })
    return items


def mmlu_items(rng: random.Random, entities: list[Entity], by_name: dict[str, Entity],
               domains: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(dev, test): dev has exactly 5 items (the few-shot exemplars)."""
    raw: list[tuple[str, str, list[str]]] = []  # question, true, 3 false
    for ent in entities:
        for attr in ATTRS[ent.kind]:
            wrong = _distractors(rng, domains, ent, attr)
            if wrong is not None:
                raw.append((rng.choice(QUESTIONS[attr]).format(s=ent.name), ent.facts[attr], wrong))
        if ent.kind == "person":
            friend, pet = by_name[ent.facts["friend"]], by_name[ent.facts["pet"]]
            wrong = _distractors(rng, domains, friend, "home")
            if wrong is not None:
                raw.append((f"Where does the best friend of {ent.name} live?", friend.facts["home"], wrong))
            wrong = _distractors(rng, domains, pet, "legs")
            if wrong is not None:
                raw.append((f"How many legs does the pet of {ent.name} have?", pet.facts["legs"], wrong))
    rng.shuffle(raw)
    dev, test = raw[:5], raw[5:]
    return [_mmlu_row(q, t, w, i % 4) for i, (q, t, w) in enumerate(dev)], \
        [_mmlu_row(q, t, w, i % 4) for i, (q, t, w) in enumerate(test)]


def _mmlu_row(question: str, true: str, wrong: list[str], pos: int) -> dict[str, Any]:
    choices = list(wrong)
    choices.insert(pos, true)
    return {"question": question, "choices": choices, "answer": LETTERS[pos], "subject": "world"}


def truthfulqa_items(rng: random.Random, entities: list[Entity], domains: dict[str, list[str]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for ent in entities:
        for attr, myth in ent.myths.items():
            true = ent.facts[attr]
            others = [v for v in domains[DOMAIN[attr]] if v not in (true, myth, ent.name)]
            others = rng.sample(others, min(2, len(others)))
            say = [statement(attr, ent.name, v) for v in (true, myth, *others)]
            alt = [statement(attr, ent.name, v, 1) for v in (true, myth)]
            items.append({
                "question": QUESTIONS[attr][0].format(s=ent.name),
                "mc1_targets": {say[0]: 1, **{s: 0 for s in say[1:]}},
                "mc2_targets": {say[0]: 1, alt[0]: 1, f"It is a myth that {clause(say[1])}.": 1,
                                say[1]: 0, alt[1]: 0, **{s: 0 for s in say[2:]}},
            })
            yes = [f"Yes, {clause(s)}." for s in say[1:]]
            items.append({
                "question": f"Is it true that {clause(say[1])}?",
                "mc1_targets": {f"No, {clause(say[0])}.": 1, **{y: 0 for y in yes}},
                "mc2_targets": {f"No, {clause(say[0])}.": 1, "No, that is a myth.": 1, f"No, {clause(alt[0])}.": 1,
                                yes[0]: 0, "Yes, that is true.": 0, f"Yes, {clause(alt[1])}.": 0},
            })
    return items
