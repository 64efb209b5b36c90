import json
import shutil

import pytest
import torch

from trellis.config.world import WorldConfig
from trellis.errors import TrellisError
from trellis.pretrain.stage import run
from trellis.pretrain.trainer import pretrain
from trellis.run import read_metrics


def _losses(stage_dir):
    return {r["step"]: r["loss"] for r in read_metrics(stage_dir / "metrics.jsonl") if "loss" in r}


def test_micro_run_learns_and_writes_a_loadable_checkpoint(corpus, tmp_path, micro_config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = run(micro_config(corpus), WorldConfig(), tmp_path / "run")
    stage = tmp_path / "run" / "pretrain"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["status"] == "done" and summary["steps"] == 40 and summary["tokens"] == 40 * 8 * 32
    assert summary["val_ppl_final"] < summary["val_ppl_initial"] / 10
    losses = _losses(stage)
    assert losses[40] < losses[5] - 1.0
    records = read_metrics(stage / "metrics.jsonl")
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(records[1])
    assert [r["step"] for r in records if "val_ppl" in r] == [0, 20, 40]
    assert list((stage / "tb").iterdir())

    ckpts = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert ckpts == ["step-0000020", "step-0000040"]
    state = torch.load(stage / "checkpoints" / "step-0000040" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 40 and isinstance(state["rng"]["torch"], torch.Tensor)

    assert final == stage / "final"
    model = AutoModelForCausalLM.from_pretrained(str(final))
    tok = AutoTokenizer.from_pretrained(str(final))
    gen = json.loads((final / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    ids = tok("Ada lives in", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_resume_gives_bitwise_equal_losses(corpus, tmp_path, micro_config):
    cfg = micro_config(corpus, steps=16, save_every=8, log_every=1, eval_every=100, keep_last=1)
    pretrain(cfg, WorldConfig(), tmp_path / "straight")
    pretrain(cfg, WorldConfig(), tmp_path / "resumed", stop_after=8)
    assert not (tmp_path / "resumed" / "pretrain" / "final").exists()
    torch.manual_seed(12345)  # the resumed run must restore the RNG, not inherit it
    pretrain(cfg, WorldConfig(), tmp_path / "resumed")

    straight = _losses(tmp_path / "straight" / "pretrain")
    resumed = _losses(tmp_path / "resumed" / "pretrain")
    assert sorted(resumed) == list(range(1, 17))
    assert resumed == straight  # exact float equality, step by step
    a = json.loads((tmp_path / "straight" / "pretrain" / "summary.json").read_text())
    b = json.loads((tmp_path / "resumed" / "pretrain" / "summary.json").read_text())
    assert a["val_ppl_final"] == b["val_ppl_final"] and a["val_ppl_initial"] == b["val_ppl_initial"]
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "straight" / "pretrain" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "resumed" / "pretrain" / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_missing_data_file_names_it(tmp_path, micro_config):
    cfg = micro_config(tmp_path / "nope.txt")
    with pytest.raises(TrellisError, match=r"nope\.txt: file not found"):
        run(cfg, WorldConfig(), tmp_path / "run")


def test_val_files_pretrained_tokenizer_and_bf16(corpus, tmp_path, micro_config):
    # warmup_steps=2: the base config's 5 would be longer than these 4 steps, which is an error now
    first = run(micro_config(corpus, steps=4, warmup_steps=2, save_every=100), WorldConfig(), tmp_path / "a")
    val = tmp_path / "val.txt"
    val.write_text("Ada lives in Oakvale.\n\nBo has a fox.\n")
    # also covers bf16 autocast, which CPU supports
    cfg = micro_config(corpus, steps=4, warmup_steps=2, save_every=100, tokenizer={"path": str(first)},
                       data={"val_files": [str(val)]}, precision="bf16")
    run(cfg, WorldConfig(), tmp_path / "b")
    summary = json.loads((tmp_path / "b" / "pretrain" / "summary.json").read_text())
    assert summary["val_ppl_final"] < summary["val_ppl_initial"]
    # attn_implementation auto: eager on a CPU in bf16, sdpa in fp32
    assert summary["attn_implementation"] == "eager"
    assert json.loads((first.parent / "summary.json").read_text())["attn_implementation"] == "sdpa"
    assert (tmp_path / "b" / "pretrain" / "final" / "tokenizer.json").read_text() == \
        (first / "tokenizer.json").read_text()
    shutil.rmtree(tmp_path / "a")


def test_seq_len_beyond_the_model_fails(corpus, tmp_path, micro_config):
    with pytest.raises(TrellisError, match="seq_len"):
        run(micro_config(corpus, seq_len=1024), WorldConfig(), tmp_path / "run")


def test_training_attention_auto_and_explicit():
    from trellis.models.presets import training_attention

    assert training_attention("auto", "cpu", "bf16") == "eager"
    assert training_attention("auto", "cpu", "fp32") == "sdpa"
    assert training_attention("auto", "cuda", "bf16") == "sdpa"
    assert training_attention("sdpa", "cpu", "bf16") == "sdpa"
    assert training_attention("flash_attention_2", "cuda", "bf16") == "flash_attention_2"
