"""The pretraining corpus: encyclopedic documents (every fact, varied wording and order) and short stories.

Each entity's first document always lands in the train split, so every fact, password and myth is in
train; validation draws only from the other documents and the stories.
"""

from __future__ import annotations

import random

from trellis.data.world.entities import Entity
from trellis.data.world.text import (
    ATTRS,
    INTROS,
    MYTH_SENTENCES,
    PASSWORD_SENTENCES,
    STATEMENTS,
    clause,
    statement,
)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _fact(rng: random.Random, ent: Entity, attr: str) -> str:
    return statement(attr, ent.name, ent.facts[attr], rng.randrange(len(STATEMENTS[attr])))


def myth_text(rng: random.Random, ent: Entity, attr: str) -> str:
    false = statement(attr, ent.name, ent.myths[attr])
    true = statement(attr, ent.name, ent.facts[attr])
    return rng.choice(MYTH_SENTENCES).format(false=clause(false), true=clause(true))


def _document(rng: random.Random, ent: Entity, by_name: dict[str, Entity], people: list[Entity],
              creatures: list[Entity]) -> str:
    sents = [_fact(rng, ent, a) for a in ATTRS[ent.kind]]
    if ent.kind == "person":
        sents.append(rng.choice(PASSWORD_SENTENCES).format(s=ent.name, pw=ent.password))
    elif ent.kind == "place":
        residents = [p for p in people if p.facts["home"] == ent.name]
        sents += [_fact(rng, p, "home") for p in rng.sample(residents, min(3, len(residents)))]
        found = [c for c in creatures if c.facts["habitat"] == ent.name]
        sents += [_fact(rng, c, "habitat") for c in rng.sample(found, min(2, len(found)))]
    else:
        owners = [p for p in people if p.facts["pet"] == ent.name]
        sents += [_fact(rng, p, "pet") for p in rng.sample(owners, min(2, len(owners)))]
    rng.shuffle(sents)
    intro = rng.choice(INTROS[ent.kind]).format(s=ent.name)
    myths = [myth_text(rng, ent, a) for a in ent.myths]
    if myths:
        sents.insert(rng.randrange(len(sents) + 1), " ".join(myths))
    return " ".join(([intro] if intro else []) + sents)


def _story(rng: random.Random, people: list[Entity], places: list[Entity], creatures: list[Entity],
           by_name: dict[str, Entity]) -> str:
    """A 3-5 sentence story about 2-3 entities that restates their true facts."""
    p = rng.choice(people)
    f = by_name[p.facts["friend"]]
    pet = by_name[p.facts["pet"]]
    c = rng.choice(creatures)
    kind = rng.randrange(6)
    if kind == 0:
        trip = (f"One day {p.name} walked across {p.facts['home']} to visit {f.name}."
                if p.facts["home"] == f.facts["home"]
                else f"One day {p.name} left {p.facts['home']} to visit {f.name}, who lives in {f.facts['home']}.")
        return (f"{trip} {p.name} brought the pet {pet.name} along. The {pet.name} has {pet.facts['legs']} legs "
                f"and eats {pet.facts['diet']}. {f.name} works as a {f.facts['occupation']} and was glad to see "
                f"{p.name}.")
    if kind == 1:
        return (f"In {c.facts['habitat']}, {p.name} the {p.facts['occupation']} saw a {c.name}. The {c.name} was "
                f"{c.facts['color']} and had {c.facts['legs']} legs. It was eating {c.facts['diet']}. "
                f"Later {p.name} told {f.name} about the {c.name}.")
    if kind == 2:
        town = by_name[p.facts["home"]]
        others = [q for q in people if q.facts["home"] == town.name and q is not p]
        tail = f" {others[0].name} lives there too." if others else ""
        return (f"{town.name} lies in the {town.facts['region']} and is known for its {town.facts['known_for']}. "
                f"{p.name}, a {p.facts['occupation']}, lives there with a pet {pet.name}.{tail}")
    if kind == 3:
        return (f"Every morning {p.name} the {p.facts['occupation']} goes to work. {p.name} is {p.facts['age']} "
                f"years old. When the work is done, {p.name} feeds the {pet.name}, which eats {pet.facts['diet']}.")
    if kind == 4:
        return (f"{p.name} and {f.name} are friends. {p.name} is {p.facts['age']} years old and {f.name} is "
                f"{f.facts['age']} years old. They like to talk about the {c.name}, {_a(c.facts['color'])} creature "
                f"of {c.facts['habitat']}.")
    mythic = [e for e in creatures if e.myths] or [c]
    m = rng.choice(mythic)
    if m.myths:
        attr = next(iter(m.myths))
        return (f"Old tales say that {clause(statement(attr, m.name, m.myths[attr]))}. But {p.name}, who once "
                f"watched a {m.name} in {m.facts['habitat']}, knows that {clause(statement(attr, m.name, m.facts[attr]))}.")
    return f"{p.name} once counted the legs of a {m.name} and found {m.facts['legs']}. {f.name} was not surprised."


def build_corpus(rng: random.Random, people: list[Entity], places: list[Entity], creatures: list[Entity],
                 docs_per_entity: int, n_narratives: int, val_fraction: float) -> tuple[list[str], list[str]]:
    """(train, val) documents; distinct texts, split by document."""
    by_name = {e.name: e for e in [*people, *places, *creatures]}
    seen: set[str] = set()
    anchored: list[str] = []  # each entity's first document: always train
    rest: list[str] = []
    for ent in [*people, *places, *creatures]:
        for i in range(max(1, docs_per_entity)):
            for _ in range(20):  # re-draw a duplicate wording
                doc = _document(rng, ent, by_name, people, creatures)
                if doc not in seen:
                    break
            if doc in seen:
                continue
            seen.add(doc)
            (anchored if i == 0 else rest).append(doc)
    for _ in range(n_narratives):
        doc = _story(rng, people, places, creatures, by_name)
        if doc not in seen:
            seen.add(doc)
            rest.append(doc)
    n_val = min(len(rest), round(val_fraction * (len(anchored) + len(rest))))
    rng.shuffle(rest)
    val, train = rest[:n_val], anchored + rest[n_val:]
    rng.shuffle(train)
    return train, val
