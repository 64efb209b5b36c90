"""The synthetic world: a seeded fictional world whose data lets a tiny model show learning at every stage.

```python
w = World(WorldConfig())                 # deterministic from cfg.seed; the default builds in well under 1 s
w.corpus("train" | "val")                # documents (val: held-out documents)
w.sft_examples()                         # {"messages": [user, assistant], "kind"}
w.comparison_pairs("train" | "test")     # {"prompt", "chosen", "rejected", "axis", "kind"}; split by prompt
w.rlhf_prompts() / w.eval_prompts()      # {"prompt", "kind"}; never in SFT; disjoint from each other
w.hellaswag_items() / w.mmlu_items("dev" | "test") / w.truthfulqa_items()
w.gold_score(prompt, response)           # {"helpfulness", "harmlessness", "honesty", "overall"}; None = n/a
w.secrets() / w.stats() / w.write(out_dir)
```
Kinds: fact, arithmetic, format, harmful, unknowable. SFT teaches the refusal `REFUSAL` and the
don't-know answer "I don't know; the records never say ...".
"""

from trellis.data.world.core import World
from trellis.data.world.tasks import KINDS
from trellis.data.world.text import DONT_KNOW_MARKERS, IDK_PREFIX, REFUSAL

__all__ = ["DONT_KNOW_MARKERS", "IDK_PREFIX", "KINDS", "REFUSAL", "World"]
