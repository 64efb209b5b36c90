"""World: a seeded fictional world and every data set Trellis trains and evaluates on.

Everything is drawn from one `random.Random(cfg.seed)` at construction, in a fixed order, so the same
config always gives the same data. See the package docstring for the public API.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trellis.config.world import WorldConfig
from trellis.data.world import bench
from trellis.data.world.corpus import build_corpus
from trellis.data.world.entities import Entity, build_entities, domain_values
from trellis.data.world.pairs import build_pairs
from trellis.data.world.scoring import GoldScorer
from trellis.data.world.tasks import (
    KINDS,
    Task,
    arithmetic_tasks,
    dedupe,
    fact_tasks,
    format_tasks,
    harmful_tasks,
    split_tasks,
    unknowable_tasks,
)
from trellis.data.world.text import UNSTATED
from trellis.errors import TrellisError


class World:
    def __init__(self, cfg: WorldConfig | None = None) -> None:
        self.cfg = cfg = cfg or WorldConfig()
        if cfg.n_people < 2 or cfg.n_places < 1 or cfg.n_creatures < 2:
            raise TrellisError("world: needs n_people >= 2, n_places >= 1 and n_creatures >= 2 "
                               f"(got {cfg.n_people}, {cfg.n_places}, {cfg.n_creatures})")
        rng = random.Random(cfg.seed)
        self.people, self.places, self.creatures = build_entities(cfg, rng)
        self.entities: list[Entity] = [*self.people, *self.places, *self.creatures]
        self.by_name = {e.name: e for e in self.entities}
        self.domains = domain_values(self.people, self.places, self.creatures)
        self._train, self._val = build_corpus(rng, self.people, self.places, self.creatures, cfg.docs_per_entity,
                                              cfg.n_narratives, cfg.val_fraction)
        n_arith = cfg.arithmetic_per_entity * (cfg.n_people + cfg.n_creatures)
        tasks = [*fact_tasks(self.entities), *arithmetic_tasks(rng, self.people, self.creatures, self.by_name, n_arith),
                 *format_tasks(rng, self.entities), *harmful_tasks(self.people), *unknowable_tasks(self.entities)]
        self.tasks: list[Task] = dedupe(tasks)
        split_tasks(rng, self.tasks, cfg.heldout_fraction)
        # prompt text (stripped) -> its task: the gold scorer's index
        self._index: dict[str, Task] = {p.strip(): t for t in self.tasks for p in t.prompts}
        self.scorer = GoldScorer(self.people, self.domains)
        self._sft = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": t.answer}],
                      "kind": t.kind} for t in self.tasks if t.dest == "sft" for p in t.prompts]
        rng.shuffle(self._sft)
        self._rlhf = [{"prompt": p, "kind": t.kind} for t in self.tasks if t.dest == "rlhf" for p in t.prompts]
        rng.shuffle(self._rlhf)
        self._eval = [{"prompt": t.eval_prompt, "kind": t.kind} for t in self.tasks if t.dest == "eval"]
        rng.shuffle(self._eval)
        self._pairs = self._split_pairs(rng, build_pairs(rng, self.tasks, self.people, self.by_name, self.domains,
                                                         self.scorer, cfg.pairs_per_axis))
        self._hellaswag = bench.hellaswag_items(rng, self.entities, self.domains)
        dev, test = bench.mmlu_items(rng, self.entities, self.by_name, self.domains)
        self._mmlu = {"dev": dev, "test": test}
        self._truthfulqa = bench.truthfulqa_items(rng, self.entities, self.domains)

    def _split_pairs(self, rng: random.Random, pairs: list[tuple[str, str, str, str, str]]) -> dict[str, list[dict]]:
        prompts = sorted({p[0] for p in pairs})
        rng.shuffle(prompts)
        n_test = max(1, round(self.cfg.pairs_test_fraction * len(prompts))) if len(prompts) > 1 else 0
        test = set(prompts[:n_test])
        out: dict[str, list[dict]] = {"train": [], "test": []}
        for prompt, chosen, rejected, axis, kind in pairs:
            out["test" if prompt in test else "train"].append({
                "prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "axis": axis, "kind": kind})
        for split in out.values():
            rng.shuffle(split)
        return out

    # -- data sets -------------------------------------------------------------------------------------
    def corpus(self, split: str = "train") -> list[str]:
        """Documents; "val" holds out whole documents (every fact is still stated in "train")."""
        return list(_pick(split, {"train": self._train, "val": self._val}, "corpus"))

    def sft_examples(self) -> list[dict[str, Any]]:
        return [_copy(x) for x in self._sft]

    def comparison_pairs(self, split: str = "train") -> list[dict[str, Any]]:
        """Pairs on helpfulness / harmlessness / honesty; "test" prompts never occur in "train"."""
        return [_copy(x) for x in _pick(split, self._pairs, "comparison_pairs")]

    def rlhf_prompts(self) -> list[dict[str, str]]:
        return [dict(x) for x in self._rlhf]

    def eval_prompts(self) -> list[dict[str, str]]:
        return [dict(x) for x in self._eval]

    def hellaswag_items(self) -> list[dict[str, Any]]:
        return [_copy(x) for x in self._hellaswag]

    def mmlu_items(self, split: str = "test") -> list[dict[str, Any]]:
        return [_copy(x) for x in _pick(split, self._mmlu, "mmlu_items")]

    def truthfulqa_items(self) -> list[dict[str, Any]]:
        return [_copy(x) for x in self._truthfulqa]

    def secrets(self) -> list[str]:
        return [p.password for p in self.people if p.password]

    # -- judging ---------------------------------------------------------------------------------------
    def _task(self, prompt: str) -> Task:
        task = self._index.get(prompt.strip())
        if task is None:
            raise TrellisError(f"gold_score: {prompt.strip()[:80]!r} is not a prompt of this world "
                               f"(seed {self.cfg.seed})")
        return task

    def gold_score(self, prompt: str, response: str) -> dict[str, float | None]:
        """Judge `response` to one of this world's prompts; rules in trellis.data.world.scoring."""
        return self.scorer.score(self._task(prompt).meta, response)

    def prompt_kind(self, prompt: str) -> str:
        return self._task(prompt).kind

    def reference_answer(self, prompt: str) -> str:
        """The answer SFT would teach for this prompt (the refusal / don't-know wording included)."""
        return self._task(prompt).answer

    # -- summaries and files ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        def by_kind(rows: list[dict[str, Any]]) -> dict[str, int]:
            return {k: sum(r["kind"] == k for r in rows) for k in KINDS}

        def by_axis(rows: list[dict[str, Any]]) -> dict[str, int]:
            return {a: sum(r["axis"] == a for r in rows) for a in ("helpfulness", "harmlessness", "honesty")}

        return {
            "seed": self.cfg.seed, "people": len(self.people), "places": len(self.places),
            "creatures": len(self.creatures),
            "facts": sum(len(e.facts) for e in self.entities),
            "unstated_attributes": sum(len(UNSTATED[e.kind]) for e in self.entities),
            "myths": sum(len(e.myths) for e in self.entities),
            "corpus_docs": {"train": len(self._train), "val": len(self._val)},
            "corpus_chars": {"train": sum(map(len, self._train)), "val": sum(map(len, self._val))},
            "sft_examples": len(self._sft), "sft_by_kind": by_kind(self._sft),
            "rlhf_prompts": len(self._rlhf), "rlhf_by_kind": by_kind(self._rlhf),
            "eval_prompts": len(self._eval), "eval_by_kind": by_kind(self._eval),
            "pairs": {s: len(v) for s, v in self._pairs.items()},
            "pairs_by_axis": {s: by_axis(v) for s, v in self._pairs.items()},
            "hellaswag": len(self._hellaswag), "mmlu": {s: len(v) for s, v in self._mmlu.items()},
            "truthfulqa": len(self._truthfulqa), "secrets": len(self.people),
        }

    def to_json(self) -> dict[str, Any]:
        """Entities and facts (world.json)."""
        return {
            "seed": self.cfg.seed,
            "entities": [{"kind": e.kind, "name": e.name, "facts": dict(e.facts), "password": e.password,
                          "myths": dict(e.myths), "unstated": list(UNSTATED[e.kind])} for e in self.entities],
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        from trellis.data.world.writer import write_world

        return write_world(self, Path(out_dir))


def _pick(split: str, options: dict[str, Any], what: str) -> Any:
    if split not in options:
        raise TrellisError(f"world.{what}: unknown split {split!r}; expected one of {sorted(options)}")
    return options[split]


def _copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_copy(v) for v in x]
    return x
