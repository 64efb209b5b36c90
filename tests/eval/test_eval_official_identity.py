"""The mirrors against lm-eval's official task definitions, run offline on the same documents.

The official task is built from its own YAML in the installed lm-eval, with only its hub download replaced
by the same documents in the hub dataset's schema (Rowan/hellaswag, cais/mmlu, truthful_qa
multiple_choice), converted here independently of trellis.eval.tasks. Every request each task would send
to a model (doc, context with few-shot examples, continuation) must be identical, and so must the
per-document metrics on the same model outputs.
"""

import csv
import json
import random
from pathlib import Path

import pytest

from trellis.eval.tasks import TaskData, official_tasks_dir, write_task_dir

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
MMLU_SUBSAMPLE = 20


# -- the hub schemas, from the release files -----------------------------------------------------------
def hub_hellaswag(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{**row, "label": str(row["label"])} for row in rows]  # Rowan/hellaswag stores the label as text


def hub_mmlu(path: Path, subject: str) -> list[dict]:
    with path.open(newline="") as fh:
        return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans)}
                for q, a, b, c, d, ans in csv.reader(fh)]


def hub_truthfulqa(path: Path) -> list[dict]:
    return [{"question": item["question"],
             **{key: {"choices": list(item[key]), "labels": list(item[key].values())}
                for key in ("mc1_targets", "mc2_targets")}}
            for item in json.loads(path.read_text())]


# -- building requests -----------------------------------------------------------------------------------
def official_task(relpath: str, splits: dict[str, list[dict]], num_fewshot: int | None = None):
    import datasets
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    class Offline(ConfigurableTask):
        def download(self, dataset_kwargs=None, **kwargs):
            self.dataset = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    task = Offline(config=load_yaml(official_tasks_dir() / relpath))
    if num_fewshot is not None:
        task.set_config(key="num_fewshot", value=num_fewshot)
    return task


def mirror_tasks(task_dir: Path, name: str) -> dict:
    from lm_eval.tasks import TaskManager

    def leaves(loaded):
        out = {}
        for key, value in loaded.items():
            out.update(leaves(value) if isinstance(value, dict) else {key: value})
        return out

    return leaves(TaskManager(include_path=str(task_dir), include_defaults=False).load_task_or_group([name]))


def requests(task) -> list[tuple]:
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(rank=0, world_size=1)
    return [(inst.request_type, inst.doc_id, inst.idx, inst.arguments) for inst in task.instances]


def same_metrics(mirror, official, n_docs: int = 5) -> None:
    rng = random.Random(0)
    for doc, ref in list(zip(mirror.eval_docs, official.eval_docs, strict=True))[:n_docs]:
        outputs = [(rng.uniform(-20, -1), rng.random() < 0.5) for _ in official.doc_to_choice(ref)]
        assert mirror.process_results(doc, outputs) == official.process_results(ref, outputs)


def check_all(task_dir: Path, data: TaskData, prefix: str, subjects: list[str], mmlu_shots: int) -> int:
    """Compare every task; returns the number of requests compared."""
    name = lambda base: f"{prefix}_{base}" if prefix else base  # noqa: E731
    compared = 0
    docs = hub_hellaswag(data.hellaswag)
    # the official task names a train split for few-shot examples; at its default 0 shots it is never read
    hs = official_task("hellaswag/hellaswag.yaml", {"train": docs[:1], "validation": docs})
    mirror = mirror_tasks(task_dir, name("hellaswag"))[name("hellaswag")]
    assert requests(mirror) == (want := requests(hs)) and want
    same_metrics(mirror, hs)
    compared += len(want)

    mmlu = mirror_tasks(task_dir, name("mmlu"))
    assert set(mmlu) == {name(f"mmlu_{s}") for s in data.mmlu_test}
    for subject in subjects:
        test = hub_mmlu(data.mmlu_test[subject], subject)[:MMLU_SUBSAMPLE]
        ref = official_task(f"mmlu/default/mmlu_{subject}.yaml",
                            {"test": test, "dev": hub_mmlu(data.mmlu_dev[subject], subject)}, num_fewshot=mmlu_shots)
        mirror = mmlu[name(f"mmlu_{subject}")]
        assert requests(mirror) == (want := requests(ref)) and len(want) == 4 * len(test)
        same_metrics(mirror, ref, n_docs=2)
        compared += len(want)

    rows = hub_truthfulqa(data.truthfulqa)
    for variant in ("mc1", "mc2"):
        ref = official_task(f"truthfulqa/truthfulqa_{variant}.yaml", {"validation": rows})
        mirror = mirror_tasks(task_dir, name(f"truthfulqa_{variant}"))[name(f"truthfulqa_{variant}")]
        assert requests(mirror) == (want := requests(ref)) and want
        same_metrics(mirror, ref)
        compared += len(want)
    return compared


def test_fixture_mirrors_send_the_official_requests(task_files, tmp_path):
    from eval_fixtures import MMLU

    data = TaskData.find(task_files)
    write_task_dir(data, tmp_path, prefix="", fewshot={"mmlu": 2})
    # otter_lore has no official YAML to compare with; high_school_geography has (with its description)
    assert set(MMLU) == {"otter_lore", "high_school_geography"}
    assert check_all(tmp_path, data, "", ["high_school_geography"], mmlu_shots=2) == 3 * 4 + 4 * 2 + 5 + 7


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "mmlu").is_dir(), reason="shared/data is not beside the checkout")
def test_shared_data_mirrors_send_the_official_requests(tmp_path):
    """HellaSwag's 1000-row sample, MMLU 5-shot on the first 20 questions of all 57 subjects, TruthfulQA's
    790 questions: the official names (source: local), request for request."""
    data = TaskData.find(SHARED)
    assert len(data.mmlu_test) == 57 and set(data.mmlu_dev) == set(data.mmlu_test)
    names = write_task_dir(data, tmp_path, prefix="", fewshot={"mmlu": 5}, subsample={"mmlu": MMLU_SUBSAMPLE})
    assert names == ["hellaswag", "mmlu", "mmlu_continuation", "truthfulqa_mc1", "truthfulqa_mc2"]
    compared = check_all(tmp_path, data, "", sorted(data.mmlu_test), mmlu_shots=5)
    assert compared == 4000 + 4 * 57 * MMLU_SUBSAMPLE + 4057 + 6045
