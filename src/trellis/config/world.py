"""Size and seed of the synthetic world (src/trellis/data/world/)."""

from pydantic import Field

from trellis.config.base import Section


class WorldConfig(Section):
    seed: int = 0
    # entities of each kind; the default makes the quickstart learnable in minutes on 2 cores
    n_people: int = Field(32, ge=2)
    n_places: int = Field(8, ge=1)
    n_creatures: int = Field(12, ge=2)
    # how many differently worded documents the corpus renders per entity (knowledge needs paraphrase)
    docs_per_entity: int = Field(10, ge=1)
    n_narratives: int = Field(500, ge=0)
    # fraction of documents held out for validation perplexity
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    # fraction of question prompts reserved for RLHF and evaluation (never seen in SFT)
    heldout_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    # arithmetic tasks per person and creature
    arithmetic_per_entity: int = Field(4, ge=0)
    # comparison pairs per axis (helpfulness, harmlessness, honesty; the same number on each)
    pairs_per_axis: int = Field(800, ge=1)
    # fraction of comparison prompts whose pairs form the test split
    pairs_test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
