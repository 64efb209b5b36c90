import json

import pytest
import torch

from trellis.config import WorldConfig
from trellis.errors import TrellisError
from trellis.rlhf import stage
from trellis.rlhf.ptx import PtxStream, causal_lm_loss, ptx_documents, token_windows


def _windows(tokenizer, path, seq_len=16):
    return token_windows(ptx_documents(str(path), None), tokenizer, seq_len)


def test_windows_batches_are_seeded_and_resume(tokenizer, ptx_text_file):
    windows = _windows(tokenizer, ptx_text_file)
    assert windows.shape[1] == 17 and windows.shape[0] > 8
    a = PtxStream(windows, 3, seed=5, device="cpu")
    first, second = a.next_batch(), a.next_batch()
    b = PtxStream(windows, 3, seed=5, device="cpu")
    b.load_state_dict(json.loads(json.dumps({"position": 3})))
    assert torch.equal(b.next_batch(), second) and not torch.equal(first, second)


def test_backward_adds_coef_times_the_lm_gradient(tiny_dirs, tokenizer, ptx_text_file):
    from trellis.checkpoint import load_causal_lm

    model = load_causal_lm(tiny_dirs[0])
    windows = _windows(tokenizer, ptx_text_file)
    stream = PtxStream(windows, 2, seed=0, device="cpu")
    batch = PtxStream(windows, 2, seed=0, device="cpu").next_batch()
    loss = stream.backward(model, 0.5)
    grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    expected = causal_lm_loss(model, batch)
    expected.backward()
    assert loss == pytest.approx(float(expected.detach()))
    assert torch.allclose(grad, 0.5 * model.lm_head.weight.grad, atol=1e-7)


def test_ppo_ptx_lowers_the_lm_loss_on_the_ptx_text(tmp_path, make_config, tiny_dirs, tokenizer, ptx_text_file):
    from trellis.checkpoint import load_causal_lm

    windows = _windows(tokenizer, ptx_text_file, seq_len=32)
    losses = {}
    for coef in (0.0, 5.0):
        config = make_config(ptx_coef=coef, ptx_data=str(ptx_text_file), ptx_seq_len=32, ptx_batch_size=4)
        final = stage.run(config, WorldConfig(), tmp_path / f"coef{coef}")
        with torch.no_grad():
            losses[coef] = float(causal_lm_loss(load_causal_lm(final), windows))
        records = [json.loads(x) for x in (tmp_path / f"coef{coef}" / "rlhf" / "metrics.jsonl").read_text().splitlines()]
        assert ("ptx_loss" in records[-1]) == (coef > 0)
    with torch.no_grad():
        initial = float(causal_lm_loss(load_causal_lm(tiny_dirs[0]), windows))
    # PPO alone barely moves the LM loss on unrelated text; the ptx term pulls it down
    assert losses[5.0] < initial - 0.1
    assert losses[5.0] < losses[0.0] - 0.1


def test_ptx_data_errors_name_the_key(tmp_path, make_config):
    with pytest.raises(TrellisError, match="rlhf.ptx_data"):
        stage.run(make_config(ptx_coef=1.0, ptx_data=str(tmp_path / "missing.txt")), WorldConfig(), tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("Aye.")
    with pytest.raises(TrellisError, match="rlhf.ptx_data"):
        stage.run(make_config(ptx_coef=1.0, ptx_data=str(short)), WorldConfig(), tmp_path / "b")
