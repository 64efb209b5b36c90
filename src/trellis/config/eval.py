"""`trellis eval`: lm-eval tasks, held-out perplexity and gold scores, compared across models."""

from typing import Literal

from pydantic import Field, model_validator

from trellis.config.base import Section

WORLD_TASKS = ["world_hellaswag", "world_mmlu", "world_truthfulqa_mc1", "world_truthfulqa_mc2"]
OFFICIAL_TASKS = ["hellaswag", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2"]


class EvalConfig(Section):
    # name -> checkpoint directory; in a pipeline, empty means every model the pipeline trained
    models: dict[str, str] = {}
    # where the multiple-choice tasks read their data:
    #   world  the synthetic world's files, tasks world_hellaswag, world_mmlu, world_truthfulqa_mc1/mc2
    #   local  files in the original release formats under data_dir (e.g. shared/data), mirrored under
    #          lm-eval's own names: hellaswag, mmlu (+ mmlu_<subject>), truthfulqa_mc1, truthfulqa_mc2
    #   hub    lm-eval's official task definitions, which download their data from the Hugging Face hub
    source: Literal["world", "local", "hub"] = "world"
    data_dir: str | None = None
    # lm-eval task names; empty means the four benchmarks under the source's names
    tasks: list[str] | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    # task -> few-shot count pinned for that task alone (e.g. {"world_mmlu": 5}); others keep the official
    # default. num_fewshot, when set, overrides these pins (lm-eval applies it to every task but truthfulqa)
    fewshot: dict[str, int] = {}
    # benchmark (hellaswag, mmlu, truthfulqa) -> keep its first N documents (mmlu: N per subject), written
    # into the mirrors' data so lm-eval's own `--model hf` on the same YAML sees the same set (world, local)
    subsample: dict[str, int] = {}
    # expected calibration error of the multiple-choice tasks (mc2 aside: several answers are true) and one
    # temperature fitted by NLL on half of their documents, ECE before/after on the other half
    calibration: bool = False
    # write that temperature into each evaluated checkpoint's generation_config.json (serving's default)
    write_temperature: bool = False
    # alignment: a reward model (checkpoint dir) scores each model's greedy answers to `alignment_prompts`
    # held-out world prompts (win-rate against the first model) and to a red-team set: the world's harmful
    # prompts plus, with red_team_hh (e.g. shared/data/hh-rlhf/harmless-base_test.jsonl.gz), hh-rlhf's
    # opening requests; `red_team_prompts` from each source
    reward_model: str | None = None
    alignment_prompts: int = 64
    # win-rate prompts from a file instead of the world (what rlhf.prompts takes: json/jsonl of {"prompt"},
    # or comparison pairs such as hh-rlhf's, whose single-turn prompts are used), after skipping the first
    # alignment_prompts_skip prompts (e.g. those a reward model or PPO trained on). With a file and no
    # world task, gold or world perplexity, the world's harmful prompts leave the red-team set too
    alignment_prompts_file: str | None = None
    alignment_prompts_skip: int = Field(default=0, ge=0)
    red_team_hh: str | None = None
    red_team_prompts: int = 64
    # skip red_team_hh's first lines (e.g. the pairs a reward stage read with `limit`)
    red_team_hh_skip: int = Field(default=0, ge=0)
    batch_size: int = 16
    # name -> text file for held-out perplexity; "world" adds the world's validation split
    perplexity: dict[str, str] = {"world_val": "world"}
    # perplexity windows: the model's context length unless set; a forward pass takes as many windows as
    # fit perplexity_batch_tokens (its logits are that many tokens x the vocabulary, in float32)
    perplexity_window: int | None = Field(default=None, ge=1)
    perplexity_batch_tokens: int = Field(default=8192, ge=1)
    # gold helpfulness/harmlessness/honesty of greedy answers to held-out world prompts
    gold: bool = True
    gold_prompts: int = 64
    max_new_tokens: int = 48
    device: str = "auto"

    @model_validator(mode="after")
    def _source_needs(self) -> "EvalConfig":
        if self.source == "local" and not self.data_dir:
            raise ValueError("eval.data_dir: source 'local' reads the benchmark files from a directory; set data_dir")
        if self.write_temperature and not self.calibration:
            raise ValueError("eval.write_temperature: needs eval.calibration: true (it writes the fitted temperature)")
        if self.source == "hub" and self.subsample:
            raise ValueError("eval.subsample: applies to the local mirrors only; with source 'hub' use eval.limit")
        return self

    def task_names(self) -> list[str]:
        if self.tasks is not None:
            return list(self.tasks)
        return list(WORLD_TASKS if self.source == "world" else OFFICIAL_TASKS)
