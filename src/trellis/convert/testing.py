"""Write a tiny Llama checkpoint as a quantized GGUF file, so GGUF conversion can be tested in seconds.

The layout follows llama.cpp's convert_hf_to_gguf.py for Llama: tensor names `blk.N.attn_q` etc.,
q/k rows permuted for its rotary layout (transformers undoes this on load), tied output omitted,
a byte-level BPE vocabulary as `tokenizer.ggml.model = gpt2` with its merges and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TENSOR_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(checkpoint_dir: str | Path, gguf_file: str | Path, quant: str = "Q8_0") -> Path:
    """Write the Llama checkpoint at `checkpoint_dir` (with a byte-level BPE tokenizer) as `gguf_file`.

    2-D weights are stored as `quant` (any gguf.GGMLQuantizationType name, e.g. Q8_0 or F32), norms as F32.
    """
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(checkpoint_dir)
    model = AutoModelForCausalLM.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    qtype = gguf.GGMLQuantizationType[quant]

    out = Path(gguf_file)
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]) if getattr(cfg, "rope_parameters", None)
                         else float(cfg.rope_theta))
    w.add_vocab_size(cfg.vocab_size)

    tok_json = json.loads((src / "tokenizer.json").read_text())
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens) | {a["content"] for a in tok_json.get("added_tokens", [])}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_token_id if tok.bos_token_id is not None else vocab[tok.eos_token])
    w.add_eos_token_id(tok.eos_token_id)
    if tok.pad_token_id is not None:
        w.add_pad_token_id(tok.pad_token_id)
    w.add_add_bos_token(False)
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    for name, tensor in model.state_dict().items():
        arr = tensor.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.tie_word_embeddings:
                continue
            gname = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module = rest.rsplit(".", 1)[0]
            gname = f"blk.{layer}.{TENSOR_NAMES[module]}.weight"
            if module == "self_attn.q_proj":
                arr = _permute(arr, cfg.num_attention_heads)
            elif module == "self_attn.k_proj":
                arr = _permute(arr, cfg.num_key_value_heads)
        if arr.ndim == 2 and qtype not in (gguf.GGMLQuantizationType.F32,):
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gname, arr.astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
