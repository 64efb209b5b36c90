"""SmolLM2-135M-Instruct on a slice of the shared/data mirrors: our lm-eval model against lm-eval's HFLM."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SUBJECTS = ["abstract_algebra", "high_school_geography"]

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (SHARED / "mmlu").is_dir(), reason="shared/data is not beside the checkout")]


def _instances(task_dir: Path, names: list[str]):
    from lm_eval.tasks import TaskManager

    def leaves(loaded):
        out = {}
        for key, value in loaded.items():
            out.update(leaves(value) if isinstance(value, dict) else {key: value})
        return out

    tasks = leaves(TaskManager(include_path=str(task_dir), include_defaults=False).load_task_or_group(names))
    instances = []
    for task in tasks.values():
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(rank=0, world_size=1)
        instances += task.instances
    return instances


def test_smollm2_loglikelihoods_equal_hflm_on_the_mirrors(tmp_path):
    """HellaSwag (0-shot), MMLU (5-shot, two subjects) and TruthfulQA (mc1 and mc2 share contexts): every
    request's log-likelihood within 1e-4 of HFLM's and the same greedy flag; the real data's prompts are
    long enough that the few-shot preamble and each question's context are shared."""
    from lm_eval.models.huggingface import HFLM

    from trellis.checkpoint import load_causal_lm, load_tokenizer
    from trellis.convert.smollm2 import smollm2_checkpoint
    from trellis.eval.lm_model import TrellisLM
    from trellis.eval.tasks import TaskData, write_task_dir

    data = TaskData.find(SHARED)
    data.mmlu_test = {s: data.mmlu_test[s] for s in SUBJECTS}
    write_task_dir(data, tmp_path, prefix="", fewshot={"mmlu": 5},
                   subsample={"hellaswag": 6, "mmlu": 3, "truthfulqa": 4})
    instances = _instances(tmp_path, ["hellaswag", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2"])
    assert len(instances) > 60

    path = smollm2_checkpoint()
    model, tok = load_causal_lm(path), load_tokenizer(path)
    got = TrellisLM(model=model, tokenizer=tok, batch_size=8).loglikelihood(instances, disable_tqdm=True)
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=8, device="cpu").loglikelihood(instances, disable_tqdm=True)
    for inst, (g, g_greedy), (w, w_greedy) in zip(instances, got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4), inst.arguments
        assert g_greedy == w_greedy
