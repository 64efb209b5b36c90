"""`trellis eval`: lm-eval tasks, held-out perplexity and gold scores, compared across models."""

from trellis.config.base import Section


class EvalConfig(Section):
    # name -> checkpoint directory; in a pipeline, empty means every model the pipeline trained
    models: dict[str, str] = {}
    # lm-eval task names; world_* are the synthetic world's local task mirrors
    tasks: list[str] = ["world_hellaswag", "world_mmlu", "world_truthfulqa_mc1", "world_truthfulqa_mc2"]
    limit: int | None = None
    num_fewshot: int | None = None
    # task -> few-shot count pinned for that task alone (e.g. {"world_mmlu": 5}); others keep the official
    # default. num_fewshot, when set, overrides these pins (lm-eval applies it to every task but truthfulqa)
    fewshot: dict[str, int] = {}
    batch_size: int = 16
    # name -> text file for held-out perplexity; "world" adds the world's validation split
    perplexity: dict[str, str] = {"world_val": "world"}
    # gold helpfulness/harmlessness/honesty of greedy answers to held-out world prompts
    gold: bool = True
    gold_prompts: int = 64
    max_new_tokens: int = 48
    device: str = "auto"
