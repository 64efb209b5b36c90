import json

import pytest

from trellis.errors import TrellisError
from trellis.eval.tasks import TaskData, evaluate_tasks, metrics_table, official_tasks_dir, write_task_dir

WORLD_TASKS = ["world_hellaswag", "world_mmlu", "world_mmlu_continuation", "world_truthfulqa_mc1",
               "world_truthfulqa_mc2"]


@pytest.fixture(scope="module")
def task_dir(task_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    names = write_task_dir(TaskData.find(task_files), out, fewshot={"world_mmlu": 2})
    assert names == WORLD_TASKS
    return out


def _load(task_dir, name):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False).load_task_or_group([name])


def _leaves(loaded):
    out = {}
    for key, value in loaded.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        else:
            out[getattr(key, "group_name", key) if not isinstance(key, str) else key] = value
    return out


def test_hellaswag_prompts_match_official(task_dir):
    import datasets
    from eval_fixtures import HELLASWAG
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    task = _leaves(_load(task_dir, "world_hellaswag"))["world_hellaswag"]
    official = load_yaml(official_tasks_dir() / "hellaswag" / "hellaswag.yaml")
    ref_docs = list(official["process_docs"](datasets.Dataset.from_list(HELLASWAG)))
    docs = list(task.validation_docs())
    assert len(docs) == len(ref_docs) == 3
    for doc, ref in zip(docs, ref_docs, strict=True):
        assert task.doc_to_text(doc) == apply_template(official["doc_to_text"], ref)
        assert task.doc_to_choice(doc) == ref["choices"]
        assert task.doc_to_target(doc) == int(ref["label"])
    # the wikihow markup is gone and the context capitalised as upstream does
    assert task.doc_to_text(docs[2]) == "Finance and Business: How to get a loan. Check your credit. lenders look at your score."
    assert {m["metric"] for m in task.config.metric_list} == {"acc", "acc_norm"}


def test_mmlu_prompts_match_official(task_dir):
    tasks = _leaves(_load(task_dir, "world_mmlu"))
    task = tasks["world_mmlu_otter_lore"]
    assert set(tasks) == {"world_mmlu_otter_lore", "world_mmlu_high_school_geography"}
    doc = list(task.test_docs())[2]
    ctx = task.fewshot_context(doc, num_fewshot=2)
    assert ctx == (
        "The following are multiple choice questions (with answers) about otter lore.\n\n"
        "Where does Mira the otter live?\nA. Eastwick\nB. Northfield\nC. Riverton\nD. Oakdale\nAnswer: A\n\n"
        "What does Mira like to do?\nA. Sing\nB. Swim\nC. Fly\nD. Dig\nAnswer: B\n\n"
        "How many otters live in Eastwick?\nA. One\nB. Two\nC. Three\nD. Four\nAnswer:")
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"] and task.doc_to_target(doc) == 2
    # the official subject's description line, word for word
    from lm_eval.tasks._yaml_loader import load_yaml

    official = load_yaml(official_tasks_dir() / "mmlu" / "default" / "mmlu_high_school_geography.yaml")
    assert tasks["world_mmlu_high_school_geography"].config.description == official["description"]
    assert tasks["world_mmlu_high_school_geography"].config.doc_to_text == official["doc_to_text"]


def test_mmlu_continuation_scores_the_option_text_as_the_official_variant(task_dir):
    from lm_eval.tasks._yaml_loader import load_yaml

    tasks = _leaves(_load(task_dir, "world_mmlu_continuation"))
    assert set(tasks) == {"world_mmlu_otter_lore_continuation", "world_mmlu_high_school_geography_continuation"}
    task = tasks["world_mmlu_otter_lore_continuation"]
    doc = list(task.test_docs())[2]
    # the same documents as the letter variant, pinned to its own few-shot count (none given here: 0)
    assert task.fewshot_context(doc, num_fewshot=0) == (
        "The following are questions (with answers) about otter lore.\n\n"
        "Question: How many otters live in Eastwick?\nAnswer:")
    assert task.doc_to_choice(doc) == ["One", "Two", "Three", "Four"] and task.doc_to_target(doc) == 2
    official = load_yaml(official_tasks_dir() / "mmlu" / "continuation" / "mmlu_high_school_geography.yaml")
    geography = tasks["world_mmlu_high_school_geography_continuation"]
    assert geography.config.description == official["description"]
    template = load_yaml(official_tasks_dir() / "mmlu" / "continuation" / "_continuation_template_yaml")
    assert geography.config.doc_to_text == template["doc_to_text"]


def test_truthfulqa_prompts_match_official(task_dir):
    from eval_fixtures import TRUTHFULQA
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    tasks = _leaves(_load(task_dir, "world_truthfulqa_mc2"))
    task = tasks["world_truthfulqa_mc2"]
    official = load_yaml(official_tasks_dir() / "truthfulqa" / "truthfulqa_mc2.yaml")
    doc = list(task.validation_docs())[0]
    assert task.doc_to_text(doc) == apply_template(official["doc_to_text"], {"question": TRUTHFULQA[0]["question"]})
    assert task.doc_to_text(doc).startswith("Q: What is human life expectancy in the United States?")
    assert task.doc_to_choice(doc) == list(TRUTHFULQA[0]["mc2_targets"])
    assert task.config.process_results is official["process_results"]
    # mc2: normalised probability mass on the true answers
    import math

    acc = task.process_results(doc, [(math.log(0.4), False), (math.log(0.1), False), (math.log(0.3), False),
                                     (math.log(0.2), False)])["acc"]
    assert acc == pytest.approx(0.5)


def test_simple_evaluate_on_world_tasks(tiny, task_dir, tmp_path):
    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=8)
    from trellis.eval.tasks import run_lm_eval

    results = run_lm_eval(lm, WORLD_TASKS, task_dir, limit=2)
    table = metrics_table(results, WORLD_TASKS)
    assert set(table["world_hellaswag"]) == {"acc", "acc_norm"}
    for task in WORLD_TASKS:
        assert all(0.0 <= v <= 1.0 for v in table[task].values()) and table[task]
    assert results["n-shot"]["world_mmlu_otter_lore"] == 2 and results["n-shot"]["world_truthfulqa_mc1"] == 0
    json.dumps(results, default=str)


def test_unknown_task_lists_available(tiny, task_files, tmp_path):
    model, tok = tiny
    with pytest.raises(TrellisError, match="unknown task 'world_arc'.*world_hellaswag, world_mmlu"):
        evaluate_tasks(None, ["world_arc"], TaskData.find(task_files), tmp_path)


def test_bad_mmlu_row_names_file_and_line(tmp_path):
    (tmp_path / "x_dev.csv").write_text("q,a,b,c,d,A\nq,a,b\n")
    (tmp_path / "x_test.csv").write_text("q,a,b,c,d,A\n")
    with pytest.raises(TrellisError, match="x_dev.csv:2"):
        write_task_dir(TaskData.find(tmp_path), tmp_path / "out")


def test_world_data_prompts_match_official(tmp_path):
    """The synthetic world's own files go through the mirrors into the official prompts."""
    import datasets
    from lm_eval.tasks._yaml_loader import load_yaml
    from lm_eval.utils import apply_template

    from trellis.config import WorldConfig
    from trellis.data.world import World

    world = World(WorldConfig())
    files = world.write(tmp_path / "world")
    assert write_task_dir(TaskData.from_world_files(files), tmp_path / "tasks") == WORLD_TASKS
    official = official_tasks_dir()

    hs = _leaves(_load(tmp_path / "tasks", "world_hellaswag"))["world_hellaswag"]
    ref = load_yaml(official / "hellaswag" / "hellaswag.yaml")
    ref_docs = list(ref["process_docs"](datasets.Dataset.from_list(world.hellaswag_items()[:5])))
    for doc, want in zip(list(hs.validation_docs())[:5], ref_docs, strict=True):
        assert hs.doc_to_text(doc) == apply_template(ref["doc_to_text"], want)
        assert hs.doc_to_choice(doc) == want["choices"]

    mmlu = _leaves(_load(tmp_path / "tasks", "world_mmlu"))["world_mmlu_world"]
    item = world.mmlu_items("test")[0]
    doc = list(mmlu.test_docs())[0]
    letters = "\n".join(f"{c}. {t}" for c, t in zip("ABCD", item["choices"], strict=True))
    assert mmlu.doc_to_text(doc) == f"{item['question'].strip()}\n{letters}\nAnswer:"
    assert mmlu.doc_to_target(doc) == "ABCD".index(item["answer"])

    tqa = _leaves(_load(tmp_path / "tasks", "world_truthfulqa_mc1"))["world_truthfulqa_mc1"]
    ref = load_yaml(official / "truthfulqa" / "truthfulqa_mc1.yaml")
    item = world.truthfulqa_items()[0]
    doc = list(tqa.validation_docs())[0]
    assert tqa.doc_to_text(doc) == apply_template(ref["doc_to_text"], {"question": item["question"]})
    assert tqa.doc_to_choice(doc) == list(item["mc1_targets"]) and tqa.doc_to_target(doc) == 0


def test_hub_source_runs_official_tasks_one_call_per_fewshot_count(monkeypatch):
    """source: hub names lm-eval's own tasks (no mirrors); their YAML cannot be pinned, so each few-shot
    count gets its own simple_evaluate call and the results are merged."""
    import lm_eval
    import lm_eval.tasks

    from trellis.eval.tasks import run_lm_eval

    calls = []

    class FakeManager:
        all_tasks = ["hellaswag", "mmlu", "truthfulqa_mc1"]

        def __init__(self, include_path=None, include_defaults=True):
            assert include_path is None and include_defaults

    def fake_evaluate(model, tasks, task_manager, num_fewshot, **kwargs):
        calls.append((tuple(tasks), num_fewshot))
        return {"results": {t: {"acc,none": 0.5} for t in tasks}, "n-shot": {t: num_fewshot or 0 for t in tasks}}

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", FakeManager)
    monkeypatch.setattr(lm_eval, "simple_evaluate", fake_evaluate)
    out = run_lm_eval(None, ["hellaswag", "mmlu", "truthfulqa_mc1"], None, fewshot={"mmlu": 5})
    assert calls == [(("hellaswag", "truthfulqa_mc1"), None), (("mmlu",), 5)]
    assert set(out["results"]) == {"hellaswag", "mmlu", "truthfulqa_mc1"} and out["n-shot"]["mmlu"] == 5
    with pytest.raises(TrellisError, match="unknown task 'arc'.*hellaswag"):
        run_lm_eval(None, ["arc"], None)


def test_source_switch_names_the_tasks():
    from trellis.config import EvalConfig

    assert EvalConfig().task_names()[0] == "world_hellaswag"
    assert EvalConfig(source="hub").task_names() == ["hellaswag", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2"]
    assert EvalConfig(source="local", data_dir="d", tasks=["mmlu"]).task_names() == ["mmlu"]
    with pytest.raises(ValueError, match="data_dir"):
        EvalConfig(source="local")
    with pytest.raises(ValueError, match="subsample"):
        EvalConfig(source="hub", subsample={"mmlu": 20})


def test_subsample_keeps_the_first_documents(task_files, tmp_path):
    from trellis.eval.tasks import read_jsonl

    write_task_dir(TaskData.find(task_files), tmp_path, prefix="", subsample={"hellaswag": 2, "mmlu": 1, "truthfulqa": 1})
    assert [r["ind"] for r in read_jsonl(tmp_path / "data" / "hellaswag.jsonl")] == [4, 7]
    assert len(read_jsonl(tmp_path / "data" / "mmlu_otter_lore_test.jsonl")) == 1
    assert len(read_jsonl(tmp_path / "data" / "mmlu_otter_lore_dev.jsonl")) == 2  # few-shot examples untouched
    assert len(read_jsonl(tmp_path / "data" / "truthfulqa.jsonl")) == 1
    with pytest.raises(TrellisError, match="unknown benchmark 'arc'"):
        write_task_dir(TaskData.find(task_files), tmp_path, subsample={"arc": 1})
