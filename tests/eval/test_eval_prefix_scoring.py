import pytest

from trellis.errors import TrellisError
from trellis.eval.prefix_scoring import PrefixScorer, cluster_documents

PREAMBLE = "Q: Where does Mira live?\nA: Eastwick.\n\nQ: What colour is the sky?\nA: Blue.\n\n"
QUESTIONS = ["Q: What does Mira like?\nA:", "Q: Where were the 1992 Olympics held?\nA:", "Q: Who jumps?\nA:"]
ANSWERS = [" She likes to swim.", " Barcelona, Spain.", " The quick brown fox.", " Nobody"]


def _instances(pairs):
    from lm_eval.api.instance import Instance

    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]


def _pairs():
    """The three shapes of multiple-choice requests: a shared few-shot preamble with multi-token answers
    (TruthfulQA), single-letter answers (MMLU: the input is the context alone), a context per question
    (HellaSwag), plus an input longer than the model (left-truncated)."""
    pairs = [(PREAMBLE + q, a) for q in QUESTIONS for a in ANSWERS]
    pairs += [(PREAMBLE + q + " A. red\nB. blue\nAnswer:", f" {c}") for q in QUESTIONS for c in "AB"]
    pairs += [("The quick brown fox", " jumps over the lazy dog."), ("The quick brown fox", " sleeps."),
              ("Mira the otter", " lives in Eastwick."), ("Mira the otter", " swims")]
    pairs += [("Mira the otter swims " * 30, a) for a in ANSWERS[:2]]
    return pairs


@pytest.fixture(scope="module")
def reference(tiny):
    from lm_eval.models.huggingface import HFLM

    model, tok = tiny
    return HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu").loglikelihood(
        _instances(_pairs()), disable_tqdm=True)


@pytest.mark.parametrize("batch_size,kv_budget,batch_kv", [(1, None, None), (3, None, None), (16, None, None),
                                                           (4, 30, None), (16, None, 200)])
def test_matches_hflm_per_item(tiny, reference, batch_size, kv_budget, batch_kv, monkeypatch):
    """Every item's log-likelihood and greedy flag equal HFLM's, whatever the batching and however the
    documents are split into waves (a tiny KV budget forces a wave per few documents; a tiny per-pass
    budget cuts batches short)."""
    from trellis.eval import prefix_scoring
    from trellis.eval.lm_model import TrellisLM

    per_token = prefix_scoring._kv_bytes_per_token(tiny[0])
    if kv_budget:
        monkeypatch.setattr(prefix_scoring, "KV_BUDGET_BYTES", kv_budget * per_token)
    if batch_kv:
        monkeypatch.setattr(prefix_scoring, "BATCH_KV_BYTES", batch_kv * per_token)
    model, tok = tiny
    got = TrellisLM(model=model, tokenizer=tok, batch_size=batch_size).loglikelihood(
        _instances(_pairs()), disable_tqdm=True)
    for (g, g_greedy), (w, w_greedy) in zip(got, reference, strict=True):
        assert g == pytest.approx(w, abs=1e-4)
        assert g_greedy == w_greedy


def test_shared_prefixes_are_computed_once(tiny):
    """The model sees the preamble once, each question's context once and each answer once."""
    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(int((args[0] >= 0).sum())))
    pairs = [(PREAMBLE + q, a) for q in QUESTIONS for a in ANSWERS]
    try:
        lm = TrellisLM(model=model, tokenizer=tok, batch_size=1)
        lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    finally:
        handle.remove()
    n = lambda text: len(tok.encode(text))  # noqa: E731
    # HFLM runs every request's whole input; the tree runs each distinct token once (one more token per
    # question, where BPE joins the preamble's end to the question differently, is allowed)
    hflm = sum(len(lm.tok_encode(c + a)) - 1 for c, a in pairs)
    minimal = n(PREAMBLE) + sum(n(q) + sum(n(a) for a in ANSWERS) for q in QUESTIONS) - len(pairs)
    assert sum(seen) <= minimal + 2 * len(QUESTIONS) < hflm / 2


def test_cluster_documents_groups_by_shared_preamble():
    pre = tuple(range(100, 140))
    keys = [pre + (1, 2), (7, 8, 9), pre + (3,), pre + (4, 5, 6), (7, 8, 10)]
    clusters = cluster_documents(keys, min_shared=16)
    assert sorted((shared, sorted(m)) for shared, m in clusters) == [(0, [1]), (0, [4]), (40, [0, 2, 3])]


def test_continuation_longer_than_input_is_rejected(tiny):
    model, _ = tiny
    with pytest.raises(TrellisError, match="request 0"):
        PrefixScorer(model).score([([1, 2], [1, 2, 3])])
