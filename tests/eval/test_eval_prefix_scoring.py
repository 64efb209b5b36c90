import pytest

from trellis.errors import TrellisError
from trellis.eval.prefix_scoring import PrefixScorer, _kv_bytes_per_token, cluster_documents

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


@pytest.mark.parametrize("batch_size,kv_budget,batch_kv,variant", [
    (1, None, None, "tree"), (3, None, None, "tree"), (16, None, None, "tree"), (4, 30, None, "tree"),
    (16, None, 200, "tree"), (3, None, None, "row per leaf"), (16, None, None, "full logits"), (16, None, None, "eager")])
def test_matches_hflm_per_item(tiny, reference, batch_size, kv_budget, batch_kv, variant, monkeypatch):
    """Every item's log-likelihood and greedy flag equal HFLM's, whatever the batching and however the
    clusters are split into waves (a tiny KV budget forces a wave per cluster; a tiny per-pass budget cuts
    batches short), with the tree mask (through SDPA or eager attention) or a row per leaf (attention without
    4D masks), projecting scored positions only or the model's own full logits (a head that is not a plain
    projection)."""
    import copy

    from trellis.eval import prefix_scoring
    from trellis.eval.lm_model import TrellisLM

    per_token = prefix_scoring._kv_bytes_per_token(tiny[0])
    if kv_budget:
        monkeypatch.setattr(prefix_scoring, "KV_BUDGET_BYTES", kv_budget * per_token)
    if batch_kv:
        monkeypatch.setattr(prefix_scoring, "BATCH_KV_BYTES", batch_kv * per_token)
    if variant == "row per leaf":
        monkeypatch.setattr(prefix_scoring, "TREE_MASK_ATTENTION", ())
    if variant == "full logits":
        monkeypatch.setattr(prefix_scoring, "_decoder_and_head", lambda model: (model, None))
    model, tok = tiny
    if variant == "eager":
        model = copy.deepcopy(model)
        model.set_attn_implementation("eager")
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=batch_size)
    assert lm.scorer.tree == (variant != "row per leaf")
    got = lm.loglikelihood(_instances(_pairs()), disable_tqdm=True)
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
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=1)
    lm.scorer  # noqa: B018 (made before counting: it probes the model once)
    try:
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


def _forward_shapes(model):
    """(batch, cached length, new tokens) of every forward pass of the decoder, recorded by a hook."""
    shapes = []

    def record(module, args, kwargs):
        past = kwargs.get("past_key_values")
        cached = past.get_seq_length() if past is not None else 0
        shapes.append((kwargs["input_ids"].shape[0], cached, kwargs["input_ids"].shape[1]))

    return shapes, model.model.register_forward_pre_hook(record, with_kwargs=True)


def _fewshot_pairs(tok, questions=12):
    """MMLU's shape: one few-shot preamble, many questions, answers A-D scored on the context alone."""
    preamble = "The following are questions about otters.\n\n" + PREAMBLE
    assert len(tok.encode(preamble)) > 50  # and a question fits the tiny model's 128 positions after it
    # long and short questions: short ones share a row (packed) under the cached preamble
    options = "A. one\nB. two\nC. three\nD. four\n"
    stems = [f"Q: How many otters live in pond {k}?\n{options if k % 3 else ''}Answer:" for k in range(questions)]
    return preamble, stems, [(preamble + q, f" {c}") for q in stems for c in "AB"]


def test_fewshot_preamble_is_computed_once(tiny):
    """The preamble runs in one pass of its own; each question then runs only its own tokens (plus, at
    most, the one token where BPE joins the preamble's end to the question), all of them attending to the
    preamble's cached keys/values; results equal HFLM's."""
    from lm_eval.models.huggingface import HFLM

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    preamble, stems, pairs = _fewshot_pairs(tok)
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=5)
    lm.scorer  # noqa: B018
    shapes, handle = _forward_shapes(model)
    try:
        got = lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    finally:
        handle.remove()
    assert lm.scorer.packed_rows > 0
    prefix_passes = [s for s in shapes if s[1] == 0]
    assert len(prefix_passes) == 1 and prefix_passes[0][0] == 1
    shared = prefix_passes[0][2]
    assert shared >= len(tok.encode(preamble)) - 1
    own = sum(len(tok.encode(preamble + q)) - shared for q in stems)
    question_tokens = sum(b * n for b, cached, n in shapes if cached)  # padding included
    assert all(cached == shared for _, cached, _ in shapes[1:])
    assert lm.scorer.forward_tokens - shared <= own + len(stems)
    assert lm.scorer.forward_tokens - shared <= question_tokens  # padding is not counted
    want = HFLM(pretrained=model, tokenizer=tok, batch_size=4, device="cpu").loglikelihood(
        _instances(pairs), disable_tqdm=True)
    for (g, g_greedy), (w, w_greedy) in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4) and g_greedy == w_greedy


def test_keys_values_per_pass_are_bounded(tiny, monkeypatch):
    """Under a long preamble a pass stacks at most BATCH_KV_BYTES of keys/values: the batch shrinks."""
    from trellis.eval import prefix_scoring

    model, tok = tiny
    _, _, pairs = _fewshot_pairs(tok)
    requests = [(tok.encode(c + a)[:-1], tok.encode(c + a)[len(tok.encode(c)):]) for c, a in pairs]
    per_token = prefix_scoring._kv_bytes_per_token(model)
    span = max(len(inp) for inp, _ in requests) + 4
    monkeypatch.setattr(prefix_scoring, "BATCH_KV_BYTES", 3 * span * per_token)
    scorer = PrefixScorer(model, batch_size=16)
    shapes, handle = _forward_shapes(model)
    try:
        bounded = scorer.score(requests)
    finally:
        handle.remove()
    assert max(b for b, _, _ in shapes[1:]) == 3
    assert all(b * (cached + n) <= scorer.batch_kv_tokens for b, cached, n in shapes if b > 1)
    monkeypatch.setattr(prefix_scoring, "BATCH_KV_BYTES", 1024**3)
    unbounded = PrefixScorer(model, batch_size=16).score(requests)
    assert [g for _, g in unbounded] == [g for _, g in bounded]
    assert [lp for lp, _ in unbounded] == pytest.approx([lp for lp, _ in bounded], abs=1e-5)


def test_waves_keep_cluster_prefixes_under_the_kv_budget(tiny):
    model, _ = tiny
    scorer = PrefixScorer(model, kv_budget_bytes=90 * _kv_bytes_per_token(model))
    clusters = [(40, [0, 1]), (0, [2]), (40, [3, 4]), (40, [5]), (100, [6, 7])]
    waves = scorer._waves(clusters)
    assert waves == [[(40, [0, 1]), (0, [2]), (40, [3, 4])], [(40, [5])], [(100, [6, 7])]]


def test_tree_row_and_mask():
    """A document with three leaves: one row whose leaves restart their positions where the shared part
    ends, each scored request covering the shared leaf token and its own branch; the mask lets a branch
    see the trunk and itself, never another branch, and padding sees no real token."""
    import torch

    from trellis.eval.prefix_scoring import document_rows, tree_mask

    (row,) = document_rows([5, 6], {(7, 8, 9): [0], (7, 10): [1, 2], (7,): [3]}, past=None)
    assert row.tokens == [5, 6, 7, 8, 9, 10]
    assert row.positions == [0, 1, 2, 3, 4, 3]
    assert row.branch == [0, 0, 0, 1, 1, 2]
    assert row.scored == [(0, [2, 3, 4]), (1, [2, 5]), (2, [2, 5]), (3, [2])]
    mask = tree_mask([row], width=7, past_len=2, dtype=torch.float32, device="cpu")[0, 0] == 0
    assert mask[:, :2].all()  # the cached prefix
    new = mask[:, 2:]
    assert new[5].tolist() == [True, True, True, False, False, True, False]  # leaf 2: trunk and itself
    assert new[4].tolist() == [True, True, True, True, True, False, False]
    assert not new[:6, 6].any()  # padding is seen by no real token
    plain = document_rows([5, 6], {(7, 8, 9): [0], (7, 10): [1]}, past=None, tree=False)
    assert [(r.tokens, r.scored) for r in plain] == [([5, 6, 7, 8, 9], [(0, [2, 3, 4])]), ([5, 6, 7, 10], [(1, [2, 3])])]


def test_documents_are_packed_into_rows_up_to_the_longest():
    """Short documents share a row: no row longer than the capacity, every document in exactly one row,
    its scored indices pointing at the same tokens as before, and a mask that keeps documents apart."""
    import torch

    from trellis.eval.prefix_scoring import document_rows, pack_rows, tree_mask

    docs = [document_rows(list(range(10 * d, 10 * d + n)), {(99, d): [d], (99, d, 7): [100 + d]}, past=None)[0]
            for d, n in enumerate([9, 2, 6, 3, 1, 5])]
    packed = pack_rows(docs, capacity=12)
    assert sorted(len(r.tokens) for r in packed) == [9, 11, 12, 12]  # rows of 12, 9, 8+4, 6+5 tokens
    for doc in docs:
        for i, indices in doc.scored:
            (row, got), = [(r, idx) for r in packed for j, idx in r.scored if j == i]
            assert [row.tokens[t] for t in got] == [doc.tokens[t] for t in indices]
            assert [row.positions[t] for t in got] == [doc.positions[t] for t in indices]
    row = next(r for r in packed if r.segment)
    mask = tree_mask([row], width=len(row.tokens), past_len=0, dtype=torch.float32, device="cpu")[0, 0] == 0
    segment = torch.tensor(row.segment)
    assert not (mask & (segment[:, None] != segment[None, :])).any()


def test_tempered_log_likelihoods_equal_a_plain_forward_at_each_temperature(tiny):
    """With a temperature grid, each keyed request's score at T is the sum of log softmax(logits / T) at its
    continuation's tokens (checked against one unshared forward pass per request); T = 1 is the plain score.
    Keyless requests (rolling perplexity windows) get no grid."""
    import torch

    from trellis.eval.lm_model import TrellisLM

    model, tok = tiny
    grid = (0.5, 1.0, 3.0)
    lm = TrellisLM(model=model, tokenizer=tok, batch_size=4)
    lm.score_temperatures = grid
    pairs = _pairs()[:6] + _pairs()[-4:-2]
    plain = lm.loglikelihood(_instances(pairs), disable_tqdm=True)
    assert len(lm.tempered_loglikelihoods) == len(pairs)
    for (context, continuation), (score, _) in zip(pairs, plain, strict=True):
        got = lm.tempered_loglikelihoods[(context, continuation)]
        ctx, cont = lm._encode_pair(context, continuation)
        inp = torch.tensor([(ctx + cont)[-(lm.max_length + 1):][:-1]])
        with torch.no_grad():
            logits = model(inp).logits[0, -len(cont):].double()
        for t, value in zip(grid, got, strict=True):
            want = torch.log_softmax(logits / t, -1)[torch.arange(len(cont)), torch.tensor(cont)].sum()
            assert value == pytest.approx(float(want), abs=1e-3)
        assert got[1] == pytest.approx(score, abs=1e-4)
    assert got[0] != pytest.approx(got[2], abs=1e-3)
    before = dict(lm.tempered_loglikelihoods)
    lm._loglikelihood_tokens([(None, [1, 2, 3], [4, 5])], disable_tqdm=True)
    assert lm.tempered_loglikelihoods == before and lm.scorer.tempered == []
    with pytest.raises(TrellisError, match="temperatures must be > 0"):
        lm.scorer.score([([1, 2], [2])], temperatures=[0.0])
