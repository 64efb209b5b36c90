"""Size and seed of the synthetic world (src/trellis/data/world.py)."""

from trellis.config.base import Section


class WorldConfig(Section):
    seed: int = 0
    # entities of each kind; the default makes the quickstart learnable in minutes on 2 cores
    n_people: int = 24
    n_places: int = 8
    n_creatures: int = 12
    # how many differently worded documents the corpus renders per entity (knowledge needs paraphrase)
    docs_per_entity: int = 6
    n_narratives: int = 200
    # fraction of documents held out for validation perplexity
    val_fraction: float = 0.1
    # fraction of question prompts reserved for RLHF and evaluation (never seen in SFT)
    heldout_fraction: float = 0.3
