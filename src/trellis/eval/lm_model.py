"""TrellisLM: lm-evaluation-harness's view of any Trellis or Hugging Face causal LM.

Tokenisation and continuation scoring follow lm-eval's HFLM step by step (TemplateLM's context /
continuation split, HFLM's tok_encode and left truncation), so per-item log-likelihoods equal HFLM's.
Scoring computes each shared prefix once (trellis.eval.prefix_scoring: a question's context for all its
choices, a few-shot preamble for all its questions). Generation goes through the project's one engine, trellis.serving.engine.Engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval.api.model
import lm_eval.api.registry
import torch
from lm_eval import utils as lm_utils
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
    resolve_max_length,
)
from tqdm.auto import tqdm

from trellis.errors import TrellisError

DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256

Request = tuple[Any, list[int], list[int]]


@lm_eval.api.registry.register_model("trellis")
class TrellisLM(lm_eval.api.model.TemplateLM):
    """`TrellisLM(pretrained=DIR)` loads a checkpoint; `TrellisLM(model=m, tokenizer=t)` wraps instances.

    lm-eval builds it from `--model trellis --model_args pretrained=DIR,batch_size=8` once this module
    is imported (the Trellis CLI imports it; the plain `lm_eval` CLI cannot discover it).
    """

    backend = "causal"

    def __init__(self, pretrained: str | Path | None = None, model: Any = None, tokenizer: Any = None,
                 batch_size: int | str = 16, device: str = "auto", dtype: str | None = None,
                 max_length: int | None = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 add_bos_token: bool | None = None, prefix_token_id: int | None = None,
                 engine: Any = None, **_ignored: Any) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise TrellisError("TrellisLM: pass pretrained=<checkpoint dir> or model=<instance>")
            from trellis.checkpoint import load_causal_lm, load_tokenizer
            from trellis.device import resolve_device

            torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else None
            model = load_causal_lm(pretrained, device=resolve_device(device), dtype=torch_dtype)
            tokenizer = tokenizer or load_tokenizer(pretrained)
        elif tokenizer is None:
            if pretrained is None:
                raise TrellisError("TrellisLM: a model instance needs its tokenizer (tokenizer=...)")
            from trellis.checkpoint import load_tokenizer

            tokenizer = load_tokenizer(pretrained)
        if isinstance(tokenizer, str | Path):
            from trellis.checkpoint import load_tokenizer

            tokenizer = load_tokenizer(tokenizer)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._model = model.eval()
        self.tokenizer = tokenizer
        self._batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self._max_length = max_length
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        self._engine = engine
        self._scorer: Any = None
        # token-level temperature scaling (trellis.eval.calibration): with a grid set, every keyed
        # loglikelihood request's continuation log-likelihood at each temperature, by (context, continuation)
        self.score_temperatures: tuple[float, ...] | None = None
        self.tempered_loglikelihoods: dict[tuple[str, str], list[float]] = {}

    # -- what lm-eval asks of a model ------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self._model

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def max_length(self) -> int:
        if self._max_length:
            return int(self._max_length)
        return resolve_max_length(self._model.config, self.tokenizer, default=DEFAULT_MAX_LENGTH)

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "trellis")).replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs: Any) -> list[int]:
        # HFLM's rule: the tokenizer's own default, unless the text already starts with the prefix token
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- scoring --------------------------------------------------------------------------------------
    @property
    def scorer(self) -> Any:
        """The shared-prefix scorer of this model (made once: it probes the model's output head)."""
        if self._scorer is None:
            from trellis.eval.prefix_scoring import PrefixScorer

            self._scorer = PrefixScorer(self._model, batch_size=self.batch_size)
        return self._scorer

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, continuation is the greedy decode) for each request."""
        max_len = self.max_length
        token_requests = []
        for i, (_, ctx, cont) in enumerate(requests):
            if not ctx or not cont:
                raise TrellisError(f"loglikelihood request {i}: empty context or continuation tokens")
            # as HFLM: keep the last max_length+1 tokens, the model sees all but the final one
            token_requests.append(((ctx + cont)[-(max_len + 1):][:-1], cont))
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        # rolling windows (perplexity) come without keys: no temperature grid for them
        grid = self.score_temperatures if any(key is not None for key, _, _ in requests) else None
        with torch.inference_mode():
            results = self.scorer.score(token_requests, progress=bar.update, temperatures=grid)
        bar.close()
        for i, ((key, _, _), answer) in enumerate(zip(requests, results, strict=True)):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
                if grid:
                    self.tempered_loglikelihoods[tuple(key)] = self.scorer.tempered[i]
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood over disjoint windows of the model's length (as HFLM)."""
        windows: list[Request] = []
        owners: list[int] = []
        for idx, req in enumerate(requests):
            (string,) = req.args
            token_windows = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for ctx, cont in map(lm_utils.make_disjoint_window, token_windows):
                windows.append((None, ctx, cont))
                owners.append(idx)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores, strict=True):
            totals[owner] += logprob
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation -----------------------------------------------------------------------------------
    def engine(self) -> Any:
        if self._engine is None:
            from trellis.serving.engine import Engine

            self._engine = Engine(self._model, self.tokenizer, max_batch_size=self.batch_size)
        return self._engine

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from trellis.serving.sampling import SamplingParams

        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        prompts: list[list[int]] = []
        params: list[Any] = []
        stops: list[list[str]] = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen_toks = int(kwargs.pop("max_gen_toks"))
            max_ctx = self.max_length - max_gen_toks
            if max_ctx <= 0:
                raise TrellisError(f"generate_until: max_gen_toks {max_gen_toks} >= model length {self.max_length}")
            prompts.append(self.tok_encode(context, left_truncate_len=max_ctx))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            sampling = {"temperature": temperature, "max_tokens": max_gen_toks,
                        "stop": [s for s in until if s], "stop_token_ids": [self.eot_token_id]}
            for key in ("top_p", "top_k", "seed"):
                if kwargs.get(key) is not None:
                    sampling[key] = kwargs[key]
            params.append(SamplingParams(**sampling))
            stops.append(until)
        if not prompts:
            return []
        outs = self.engine().generate(prompts, params)
        texts = []
        for req, out, until in zip(requests, outs, stops, strict=True):
            text = postprocess_generated_text(self.tok_decode(list(out.token_ids)), stop=until,
                                              think_end_token=None)
            texts.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return texts
