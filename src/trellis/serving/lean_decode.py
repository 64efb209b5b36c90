"""A lean decode step for Llama models: the same operations as transformers' forward, without its module calls.

A decode step feeds one token per row through the model. For a small model (or any model on a GPU, where
each kernel takes microseconds) the step's time is mostly host work around the arithmetic: module calls
and their hooks and decorators, the causal-mask builder, the rotary module, keyword plumbing. This step
runs the same tensor operations in the same order, reading the model's own parameters (so a policy that
PPO keeps updating needs no refresh), and writes keys and values through the engine's cache layers. Its
logits equal the model's forward (bitwise on CPU in fp32: tested); prefill still goes through the model.

Only what it was checked against is taken: `LlamaForCausalLM` with plain `nn.Linear` projections, SiLU
MLPs, sdpa attention, not wrapped (no PEFT adapters, no device map, no accelerate hooks). Anything else
returns None from `lean_decode_step`, and the engine calls the model as before; so does a step while any
forward hook is registered on the model or globally (`hooked`), since hooks are a promise that the model's
forward runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED = ("LlamaForCausalLM",)


def lean_decode_step(model: Any) -> LeanLlamaDecode | None:
    """The lean step for `model`, or None when it is not a model this step reproduces exactly."""
    if type(model).__name__ not in SUPPORTED or hasattr(model, "peft_config") or getattr(model, "hf_device_map", None):
        return None
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa" or getattr(config, "hidden_act", None) != "silu":
        return None
    if getattr(config, "pretraining_tp", 1) != 1:
        return None
    inner = model.model
    linears = [model.lm_head]
    for layer in inner.layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears += [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
        if type(layer.input_layernorm).__name__ != "LlamaRMSNorm":
            return None
    if any(type(m) is not torch.nn.Linear for m in linears) or type(inner.embed_tokens) is not torch.nn.Embedding:
        return None
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        return None
    return LeanLlamaDecode(model)


def _rms_norm(norm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's forward (fp32 statistics, the weight applied in the input's dtype)."""
    dtype = hidden.dtype
    h32 = hidden.to(torch.float32)
    variance = h32.pow(2).mean(-1, keepdim=True)
    h32 = h32 * torch.rsqrt(variance + norm.variance_epsilon)
    return norm.weight * h32.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _linear(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, module.weight, module.bias)


class LeanLlamaDecode:
    """`step(ids [B, 1], mask, positions [B, 1], cache) -> [B, vocab]` float logits of the fed tokens.

    `mask` is None (no row padded) or the `[B, 1, 1, width]` bool mask (or the `[B, width]` 0/1 mask it is
    made from) over the cache's columns after this step's column is written.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inner = model.model
        config = model.config
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.groups = config.num_attention_heads // config.num_key_value_heads
        self.modules = list(model.modules())

    def hooked(self) -> bool:
        """Whether a forward hook is registered on the model, any of its modules, or globally."""
        from torch.nn.modules import module

        if module._global_forward_hooks or module._global_forward_pre_hooks:
            return True
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.modules)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Any) -> torch.Tensor:
        inner, hd = self.inner, self.head_dim
        batch = ids.shape[0]
        if mask is not None and mask.dim() == 2:
            mask = mask.bool()[:, None, None, :]
        hidden = F.embedding(ids, inner.embed_tokens.weight)
        cos, sin = inner.rotary_emb(hidden, position_ids=positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for layer, cache_layer in zip(inner.layers, cache.layers, strict=True):
            attn, mlp = layer.self_attn, layer.mlp
            x = _rms_norm(layer.input_layernorm, hidden)
            q = _linear(attn.q_proj, x).view(batch, 1, -1, hd).transpose(1, 2)
            k = _linear(attn.k_proj, x).view(batch, 1, -1, hd).transpose(1, 2)
            v = _linear(attn.v_proj, x).view(batch, 1, -1, hd).transpose(1, 2)
            # queries and keys rotated in one set of elementwise ops (the same arithmetic per element)
            qk = torch.cat((q, k), dim=1)
            qk = (qk * cos) + (_rotate_half(qk) * sin)
            q, k = qk[:, : q.shape[1]], qk[:, q.shape[1] :]
            keys, values = cache_layer.update(k, v)
            if self.groups > 1 and mask is None:
                # as transformers' sdpa path: grouped-query attention inside the kernel when nothing is masked
                out = F.scaled_dot_product_attention(q, keys, values, scale=attn.scaling, enable_gqa=True)
            else:
                if self.groups > 1:  # one query per row: fold each key/value head's query heads into rows
                    q = q.reshape(batch, q.shape[1] // self.groups, self.groups, hd)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling)
            out = out.reshape(batch, -1, 1, hd).transpose(1, 2).contiguous().reshape(batch, 1, -1).contiguous()
            hidden = hidden + _linear(attn.o_proj, out)
            x = _rms_norm(layer.post_attention_layernorm, hidden)
            hidden = hidden + _linear(mlp.down_proj, F.silu(_linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x))
        hidden = _rms_norm(inner.norm, hidden)
        return _linear(self.model.lm_head, hidden[:, -1, :]).float()
