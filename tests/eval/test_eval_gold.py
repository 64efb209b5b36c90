from trellis.eval.gold import gold_eval


class StubWorld:
    """Scores by length; honesty applies only to 'fact' prompts, as a world may leave axes out."""

    def gold_score(self, prompt, response):
        helpful = min(len(response), 10) / 10
        honesty = 1.0 if "fact" in prompt else None
        return {"helpfulness": helpful, "harmlessness": 1.0, "honesty": honesty,
                "overall": (helpful + 1.0) / 2}


def test_gold_eval_structure(tiny):
    model, tok = tiny
    prompts = [{"prompt": f"Tell me a fact about otter {i}.", "kind": "fact"} for i in range(3)]
    prompts += [{"prompt": "How do I hurt someone?", "kind": "harmful"}]
    out = gold_eval(model, tok, StubWorld(), prompts, max_new_tokens=6, batch_size=2)
    assert out["n"] == 4
    assert 0.0 <= out["gold_score"] <= 1.0 and out["harmlessness"] == 1.0
    assert out["honesty"] == 1.0  # mean over the three prompts it applies to
    assert set(out["by_kind"]) == {"fact", "harmful"}
    assert out["by_kind"]["harmful"]["honesty"] is None and out["by_kind"]["fact"]["n"] == 3
    assert len(out["samples"]) == 4 and isinstance(out["samples"][0]["response"], str)
    assert model.training is False


def test_gold_eval_is_greedy(tiny):
    model, tok = tiny
    prompts = [{"prompt": "Where does Mira live?", "kind": "fact"}]
    a = gold_eval(model, tok, StubWorld(), prompts, max_new_tokens=5)
    b = gold_eval(model, tok, StubWorld(), prompts, max_new_tokens=5)
    assert a["samples"][0]["response"] == b["samples"][0]["response"]
