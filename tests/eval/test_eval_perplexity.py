import math

import pytest

from trellis.errors import TrellisError
from trellis.eval.perplexity import perplexity, perplexity_sets, windows

DOCS = ["Mira the otter lives in Eastwick and likes to swim. " * 12, "The sky is blue.", ""]


def test_windows_cover_every_token_once():
    for n, max_len, stride in [(10, 4, 4), (10, 4, 2), (3, 8, 8), (9, 4, 1)]:
        covered = []
        for begin, end, new in windows(n, max_len, stride):
            assert end - begin <= max_len and 0 < new <= end - begin
            covered += list(range(end - new + 1, end + 1))
        assert covered == list(range(1, n))


def test_uniform_model_has_vocab_size_ppl(tiny):
    import copy

    import torch

    model, tok = tiny
    uniform = copy.deepcopy(model)
    with torch.no_grad():
        uniform.lm_head.weight.zero_()
    for stride in (None, 16):
        out = perplexity(uniform, tok, DOCS, max_length=32, stride=stride, batch_tokens=96)
        assert out["ppl"] == pytest.approx(model.config.vocab_size, rel=1e-4)
        n_bytes = sum(len(d.encode()) for d in DOCS)
        assert out["bytes"] == n_bytes and out["documents"] == 2
        assert out["bits_per_byte"] == pytest.approx(out["tokens"] * math.log2(model.config.vocab_size) / n_bytes)


def test_matches_lm_eval_rolling_loglikelihood(tiny):
    from lm_eval.api.instance import Instance

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    docs = DOCS[:2]
    lm = TrellisLM(model=model, tokenizer=tok)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(docs)]
    want_nll = -sum(lm.loglikelihood_rolling(reqs, disable_tqdm=True))
    # lm-eval's rolling windows: disjoint windows of the model's length, eos as the prefix token
    out = perplexity(model, tok, docs, prefix_id=tok.eos_token_id)
    assert out["nll_per_token"] * out["tokens"] == pytest.approx(want_nll, rel=1e-5)
    # overlapping windows see more context than disjoint ones
    short = perplexity(model, tok, docs, max_length=16)
    rolling = perplexity(model, tok, docs, max_length=16, stride=4)
    assert short["tokens"] == rolling["tokens"] and short["ppl"] != rolling["ppl"]


def test_named_sets_and_bad_file(tiny, tmp_path):
    model, tok = tiny
    (tmp_path / "a.txt").write_text("The sky is blue. " * 5)
    out = perplexity_sets(model, tok, {"file": tmp_path / "a.txt", "docs": ["The sky is blue."]})
    assert set(out) == {"file", "docs"} and out["file"]["documents"] == 1
    with pytest.raises(TrellisError, match="missing.txt"):
        perplexity_sets(model, tok, {"x": str(tmp_path / "missing.txt")})


def test_forward_passes_stay_within_the_token_budget(tiny):
    """Windows are batched by tokens (rows x the longest window <= batch_tokens, at least one row), and the
    result does not depend on the budget."""
    model, tok = tiny
    shapes = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        docs = DOCS * 3
        one_row = perplexity(model, tok, docs, max_length=16, stride=8, batch_tokens=1)
        assert {rows for rows, _ in shapes} == {1}
        shapes.clear()
        budget = perplexity(model, tok, docs, max_length=16, stride=8, batch_tokens=40)
        assert all(rows * width <= 40 for rows, width in shapes) and max(rows for rows, _ in shapes) > 1
    finally:
        handle.remove()
    assert budget["ppl"] == pytest.approx(one_row["ppl"], rel=1e-5) and budget["tokens"] == one_row["tokens"]
    with pytest.raises(TrellisError, match="batch_tokens"):
        perplexity(model, tok, docs, batch_tokens=0)
