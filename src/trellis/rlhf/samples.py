"""Sample answers during PPO (`rlhf.samples`): greedy answers of the policy to a few fixed prompts of its own
prompt set at step 0 (before any update), every `every` steps and at the end, each scored by the frozen reward
model (the combined scalar PPO maximises, and each head of a multi-objective one), so a run shows what the
policy says before and after, not only its reward curve.

Generation, samples.jsonl and the TensorBoard text are trellis.sft.samples'; the stage puts the first and
the last generation in summary.json (`samples_initial`, `samples_final`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from trellis.run import StageRun
from trellis.sft.samples import (
    SAMPLES_FILE,
    as_markdown,
    generate_samples,
    read_samples,
    truncate_samples_after,
    write_tensorboard_text,
)


def pick_sample_prompts(prompts: list[dict[str, Any]], wanted: int | list[str]) -> list[str]:
    """The configured texts, or the first `wanted` prompts taken in turn from each axis (helpfulness,
    harmlessness, ...) so every kind of prompt shows; prompts without an axis form one group."""
    if isinstance(wanted, list):
        return list(wanted)
    by_axis: dict[Any, list[str]] = defaultdict(list)
    for item in prompts:
        by_axis[item.get("axis") or item.get("kind")].append(item["prompt"])
    groups = list(by_axis.values())
    picked: list[str] = []
    for rank in range(max(len(g) for g in groups)):
        picked += [g[rank] for g in groups if rank < len(g)]
        if len(picked) >= wanted:
            break
    return picked[:wanted]


class PolicySamples:
    """Writes scored greedy samples of the policy to the stage's samples.jsonl and TensorBoard."""

    def __init__(self, run: StageRun, tokenizer: Any, reward_model: Any, device: Any, prompts: list[str],
                 every: int, max_new_tokens: int):
        self.run, self.tokenizer, self.reward_model, self.device = run, tokenizer, reward_model, device
        self.prompts, self.every, self.max_new_tokens = prompts, every, max_new_tokens
        self.initial: list[dict[str, Any]] = []
        self.latest: list[dict[str, Any]] = []

    def resume(self, step: int) -> None:
        """Drop samples past the checkpoint and keep the step-0 ones as the initial samples."""
        truncate_samples_after(self.run, step)
        records = read_samples(self.run.dir)
        self.initial = [r for r in records if r["step"] == 0]
        self.latest = [r for r in records if r["step"] == records[-1]["step"]] if records else []

    def start(self, policy: Any, resumed_step: int | None) -> None:
        """The initial policy's samples (step 0); on resume, the ones already written up to the checkpoint."""
        if resumed_step is None:
            self.generate(policy, 0)
        else:
            self.resume(resumed_step)

    def due(self, step: int, last_step: int) -> bool:
        """Whether to sample after `step` (the end of training samples through `finish`)."""
        return step % self.every == 0 and step < last_step

    def finish(self, model: Any, step: int) -> dict[str, Any]:
        """Sample the trained model and return the summary's samples_initial / samples_final."""
        self.generate(model, step)
        return self.summary()

    def generate(self, policy: Any, step: int) -> list[dict[str, Any]]:
        records = generate_samples(policy, self.tokenizer, self.prompts, self.max_new_tokens, step)
        self._score(records)
        with (self.run.dir / SAMPLES_FILE).open("a") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in records)
        write_tensorboard_text(self.run, f"{self.run.stage}/samples", as_markdown(records), step)
        if step == 0:
            self.initial = records
        self.latest = records
        return records

    def _score(self, records: list[dict[str, Any]]) -> None:
        from trellis.rlhf.rollout import reward_scores

        per_axis: dict[str, Any] = {}
        scores = reward_scores(self.reward_model, self.tokenizer, [r["prompt"] for r in records],
                               [r["answer"] for r in records], self.device, per_axis=per_axis)
        for i, record in enumerate(records):
            record["reward"] = float(scores[i])
            for axis, values in per_axis.items():
                record[f"reward_{axis}"] = float(values[i])

    def summary(self) -> dict[str, Any]:
        return {"samples_initial": self.initial, "samples_final": self.latest}


def make_policy_samples(config: Any, run: StageRun, tokenizer: Any, reward_model: Any, device: Any,
                        prompts: list[dict[str, Any]]) -> PolicySamples | None:
    """The sampler for `rlhf.samples`, or None when it is off."""
    if config.samples is None:
        return None
    return PolicySamples(run, tokenizer, reward_model, device, pick_sample_prompts(prompts, config.samples.prompts),
                         config.samples.every, config.samples.max_new_tokens)
