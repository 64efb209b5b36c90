"""The world's entities: people, places and creatures with invented names and consistent facts."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trellis.config.world import WorldConfig
from trellis.data.world.text import (
    ATTRS,
    COLORS,
    DIETS,
    DOMAIN,
    KNOWN_FOR,
    LEGS,
    OCCUPATIONS,
    PASSWORD_WORDS,
    REGIONS,
    template_words,
)

# short, regular syllables: a small tokenizer should split a name into few pieces
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kr", "th",
           "tr", "sk", "pl")
_SIMPLE = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "m", "x")
_PLACE_SUFFIXES = ("ford", "vale", "mere", "holm", "wick", "dun", "stead", "moor", "by", "thorp")
_CREATURE_ENDINGS = ("ox", "el", "ith", "ar", "un", "ix", "ope", "ag")


@dataclass
class Entity:
    kind: str  # person | place | creature
    name: str
    facts: dict[str, str] = field(default_factory=dict)  # attribute -> value, as the corpus states it
    password: str | None = None  # people only
    myths: dict[str, str] = field(default_factory=dict)  # attribute -> the false value many people believe


class _Namer:
    """Unique pronounceable names that are no template word and no prefix clash with an existing name."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.taken: set[str] = set(template_words())

    def _accept(self, name: str, shortest: int = 4) -> bool:
        low = name.lower()
        if low in self.taken or not shortest <= len(low) <= 10:
            return False
        self.taken.add(low)
        return True

    def person(self) -> str:
        while True:
            name = (self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_SIMPLE)
                    + self.rng.choice(_VOWELS[:5]) + self.rng.choice(_CODAS)).capitalize()
            if self._accept(name, shortest=5):  # short two-syllable names are too often real words
                return name

    def place(self) -> str:
        while True:
            name = (self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                    + self.rng.choice(_PLACE_SUFFIXES)).capitalize()
            if self._accept(name):
                return name

    def creature(self) -> str:
        while True:
            name = (self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS[:5]) + self.rng.choice(_SIMPLE)
                    + self.rng.choice(_CREATURE_ENDINGS))
            if self._accept(name):
                return name


def build_entities(cfg: WorldConfig, rng: random.Random) -> tuple[list[Entity], list[Entity], list[Entity]]:
    """People, places, creatures, every fact drawn from `rng`; a few creatures and people get a myth."""
    namer = _Namer(rng)
    places = [Entity("place", namer.place()) for _ in range(cfg.n_places)]
    creatures = [Entity("creature", namer.creature()) for _ in range(cfg.n_creatures)]
    people = [Entity("person", namer.person()) for _ in range(cfg.n_people)]
    for place in places:
        place.facts = {"region": rng.choice(REGIONS), "known_for": rng.choice(KNOWN_FOR)}
    for creature in creatures:
        creature.facts = {"color": rng.choice(COLORS), "legs": rng.choice(LEGS), "diet": rng.choice(DIETS),
                          "habitat": rng.choice(places).name}
    words = rng.sample([(w, n) for w in PASSWORD_WORDS for n in range(10, 100)], len(people))
    for i, person in enumerate(people):
        friend = rng.choice([p for j, p in enumerate(people) if j != i]) if len(people) > 1 else person
        person.facts = {"home": rng.choice(places).name, "occupation": rng.choice(OCCUPATIONS),
                        "pet": rng.choice(creatures).name, "age": str(rng.randint(20, 80)), "friend": friend.name}
        person.password = f"{words[i][0]}-{words[i][1]}"
    domains = domain_values(people, places, creatures)
    n_creature_myths = max(2, round(0.5 * len(creatures)))
    n_person_myths = max(1, round(0.2 * len(people)))
    for ent, attrs in ([(c, ("color", "legs", "diet")) for c in rng.sample(creatures, min(n_creature_myths, len(creatures)))]
                       + [(p, ("occupation", "home", "pet")) for p in rng.sample(people, min(n_person_myths, len(people)))]):
        attr = rng.choice(attrs)
        others = [v for v in domains[DOMAIN[attr]] if v != ent.facts[attr]]
        if others:
            ent.myths[attr] = rng.choice(others)
    return people, places, creatures


def domain_values(people: list[Entity], places: list[Entity], creatures: list[Entity]) -> dict[str, list[str]]:
    """Every value each domain can take (what a wrong answer of that attribute may say)."""
    return {
        "person": [p.name for p in people], "place": [p.name for p in places],
        "creature": [c.name for c in creatures], "occupation": list(OCCUPATIONS), "region": list(REGIONS),
        "known_for": list(KNOWN_FOR), "color": list(COLORS), "diet": list(DIETS), "legs": list(LEGS),
        "age": [str(a) for a in range(20, 81)],
    }


def fact_pairs(entities: list[Entity]) -> list[tuple[Entity, str]]:
    return [(e, a) for e in entities for a in ATTRS[e.kind]]
