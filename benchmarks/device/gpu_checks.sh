#!/bin/bash
# The GPU checks of issue 7 in one device call (about 5 minutes on an H200, start not counted):
#   run(command="bash benchmarks/device/gpu_checks.sh", carry=[".whl"], timeout_s=480)
# after benchmarks/device/prepare.sh. PPO against TRL on the GPU, Trellis with the engine's lean decode
# step (the default) and without it (rlhf.lean_decode=false), so the step's share of the speed-up is
# measured in the same session; then the update's peak memory with and without rlhf.offload_frozen.
# Writes logs and JSON under $OUT.
# MFU (issue 3, resolved) ran here before: `MFU=1 bash benchmarks/device/gpu_checks.sh` adds it back.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRELLIS_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
T0=$SECONDS
ppo() { # name, extra args
  local name=$1; shift
  timeout ${LIMIT:-170} python3 benchmarks/bench_ppo.py --device cuda --policy .whl/models/sft \
    --reward-model .whl/models/reward --episodes 1024 --lr 1e-4 --eval-prompts 128 --repeats 1 --micro-batch-size 32 \
    --shared-critic-set value_warmup_rollouts=2 --shared-critic-set fuse_scoring_pass=true \
    --threads 8 "$@" --out $OUT/ppo-$name.json > $OUT/ppo-$name.log 2>&1
  echo "== ppo $name rc=$? t=$((SECONDS-T0))s"
  grep -A3 '"speedup_vs_trl"\|"time_split"' $OUT/ppo-$name.json | head -20
}
if [ -d .whl/models/sft ]; then
  # the lean decode step on the GPU: the same greedy tokens and close logprobs as the model's forward
  timeout 60 python3 - <<'PY' 2>&1 | grep -v Warn | tee $OUT/lean-equal.txt
import torch
from trellis.checkpoint import load_causal_lm, load_tokenizer
from trellis.serving.engine import Engine
from trellis.serving.sampling import SamplingParams
tok = load_tokenizer(".whl/models/sft"); model = load_causal_lm(".whl/models/sft", device="cuda").eval()
prompts = [[5 + (7 * i + j) % 900 for j in range(8 + i % 24)] for i in range(64)]
sp = SamplingParams(temperature=0, max_tokens=32, logprobs=0, ignore_eos=True)
lean, hf = (Engine(model, tok, max_batch_size=64, lean_decode=flag) for flag in (True, False))
assert lean.lean_decode is not None
a, b = lean.generate(prompts, sp), hf.generate(prompts, sp)
same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
diff = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.logprobs, y.logprobs))
print(f"lean decode on cuda: {same}/64 rows with the same greedy tokens, max logprob difference {diff:.2e}")
PY
  mkdir -p /tmp/trl112 && cp -r /tmp/site/trl /tmp/trl112/
  ppo lean --peers trellis-shared-critic,trl
  LIMIT=90 ppo hf-decode --peers trellis-shared-critic --shared-critic-set lean_decode=false
  # rlhf.offload_frozen: the update's peak memory with and without, SmolLM2-135M-shaped random models
  timeout 120 python3 benchmarks/bench_rlhf_memory.py --tokenizer .whl/models/sft --device cuda \
    --out $OUT/rlhf-memory.json > $OUT/rlhf-memory.log 2>&1
  echo "== memory rc=$? t=$((SECONDS-T0))s"; tail -12 $OUT/rlhf-memory.log
fi
if [ "${MFU:-0}" = 1 ]; then
  mfu() { # name, run dir, extra args (the HF side reads the tokenizer a Trellis run left in its run dir)
    local name=$1 dir=$2; shift 2
    timeout ${LIMIT:-200} python3 benchmarks/bench_pretrain.py --preset llama3.2-1b --vocab-size 128256 --seq-len 2048 \
      --precision bf16 --fast --threads 8 "$@" --out $dir > $OUT/mfu-$name.log 2>&1
    echo "== mfu $name rc=$? t=$((SECONDS-T0))s"; grep RESULT $OUT/mfu-$name.log | cut -c1-400
  }
  LIMIT=170 mfu t8x4 /tmp/mfu-a --mode trellis --batch 8 --accum 4 --steps 10 --skip 3
  LIMIT=110 mfu hf8x4 /tmp/mfu-a --mode hf --fast-hf --batch 8 --accum 4 --steps 10 --skip 3
fi
echo "== done t=$((SECONDS-T0))s"
