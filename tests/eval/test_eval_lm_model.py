import pytest

from trellis.errors import TrellisError


def _instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
            for i, pair in enumerate(pairs)]


PAIRS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("Question: What colour is the sky? Answer:", " blue"),
    ("Question: What colour is the sky? Answer: ", "blue"),
    ("A. red\nB. green\nC. blue\nD. yellow\nAnswer:", " A"),
    ("A. red\nB. green\nC. blue\nD. yellow\nAnswer:", " B"),
    ("A. red\nB. green\nC. blue\nD. yellow\nAnswer:", " C"),
    ("", "Mira the otter lives in Eastwick."),
    ("Mira the otter " * 30, "likes to swim"),  # longer than the model: left-truncated
]


def test_loglikelihood_matches_hflm(tiny):
    from lm_eval.models.huggingface import HFLM

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    ours = TrellisLM(model=model, tokenizer=tok, batch_size=3)
    ref = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    assert ours.max_length == ref.max_length
    got = ours.loglikelihood(_instances(PAIRS), disable_tqdm=True)
    want = ref.loglikelihood(_instances(PAIRS), disable_tqdm=True)
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
        assert g_greedy == w_greedy


def test_loglikelihood_rolling_matches_hflm(tiny):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    docs = ["Mira the otter lives in Eastwick. " * 20, "The sky is blue."]
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(d,), idx=i) for i, d in enumerate(docs)]
    got = TrellisLM(model=model, tokenizer=tok, batch_size=4).loglikelihood_rolling(reqs, disable_tqdm=True)
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu").loglikelihood_rolling(
        reqs, disable_tqdm=True)
    assert got == pytest.approx(want, abs=1e-3)


def test_loads_checkpoint_dir_and_rejects_bad_path(tiny_dir, tmp_path):
    from trellis.eval.lm_model import TrellisLM

    lm = TrellisLM(pretrained=str(tiny_dir), device="cpu")
    assert lm.max_length == 128
    with pytest.raises(TrellisError, match="not found"):
        TrellisLM(pretrained=str(tmp_path / "missing"))


def test_generate_until_is_greedy_and_cuts_at_stop(tiny):
    import torch
    from lm_eval.api.instance import Instance

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=2)
    contexts = ["The quick brown fox", "Question: What colour is the sky? Answer:", "Mira the otter"]
    reqs = [Instance(request_type="generate_until", doc={}, idx=i,
                     arguments=(c, {"until": [], "max_gen_toks": 6, "do_sample": False})) for i, c in enumerate(contexts)]
    got = lm.generate_until(reqs, disable_tqdm=True)
    for context, text in zip(contexts, got, strict=True):
        ids = torch.tensor([tok.encode(context)])
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    # a stop string ends the answer before it, as lm-eval's HFLM does
    stop = got[0][2:4] if len(got[0]) >= 4 else None
    if stop:
        cut = lm.generate_until([Instance(request_type="generate_until", doc={}, idx=0, arguments=(
            contexts[0], {"until": [stop], "max_gen_toks": 6, "do_sample": False}))], disable_tqdm=True)
        assert cut == [got[0].split(stop)[0]]


def test_registered_for_lm_eval(tiny_dir):
    from lm_eval.api.registry import get_model

    from trellis.eval.lm_model import TrellisLM

    cls = get_model("trellis")
    assert cls is TrellisLM
    lm = cls.create_from_arg_string(f"pretrained={tiny_dir},batch_size=4", {"device": "cpu"})
    assert lm.batch_size == 4 and lm.max_length == 128


def test_scoring_projects_scored_positions_only(tiny):
    """The whole model (logits at every position) runs once, for the probe that checks its head; scoring
    runs the decoder and projects scored positions only, and later calls reuse the same scorer."""
    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    full_passes = []
    handle = model.register_forward_pre_hook(lambda module, args: full_passes.append(1))
    try:
        lm = TrellisLM(model=model, tokenizer=tok, batch_size=3)
        lm.loglikelihood(_instances(PAIRS), disable_tqdm=True)
        lm.loglikelihood(_instances(PAIRS[:2]), disable_tqdm=True)
    finally:
        handle.remove()
    assert len(full_passes) == 1
    # A/B/C of one question share their single scored position; contexts are run but never projected
    assert 0 < lm.scorer.projected_positions < lm.scorer.forward_tokens
