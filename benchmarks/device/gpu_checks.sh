#!/bin/bash
# The GPU checks of issue 7 in one device call (about 4 minutes on an H200, start not counted):
#   run(command="bash benchmarks/device/gpu_checks.sh", carry=[".whl"], timeout_s=480)
# after benchmarks/device/prepare.sh. The CUDA graph decode step (serving/graph_decode.py): its tests and
# equality with the model's forward on the GPU, then decode-step times (forward / lean step / lean step from
# a graph), then PPO against TRL with graphs (the default, 2 repeats) and without (rlhf.cuda_graphs=false).
# MEMORY=1 adds the update's peak memory with and without rlhf.offload_frozen (measured 2026-12-04).
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
    --reward-model .whl/models/reward --episodes 1024 --lr 1e-4 --eval-prompts 128 --micro-batch-size 32 \
    --shared-critic-set value_warmup_rollouts=2 --shared-critic-set fuse_scoring_pass=true \
    --threads 8 "$@" --out $OUT/ppo-$name.json > $OUT/ppo-$name.log 2>&1
  echo "== ppo $name rc=$? t=$((SECONDS-T0))s"
  grep -A3 '"speedup_vs_trl"\|"time_split"' $OUT/ppo-$name.json | head -20
}
if [ -d .whl/models/sft ]; then
  # CUDA graph decode (serving/graph_decode.py): its CUDA test, then the same greedy tokens and close
  # logprobs as the model's forward on the quickstart policy
  timeout 90 python3 -m pytest -q -p no:cacheprovider -n 0 tests/serving/test_graph_decode.py \
    tests/serving/test_lean_decode.py 2>&1 | grep -E "^E |Error|passed|failed" | tail -12 | tee $OUT/graph-tests.txt
  timeout 60 python3 - <<'PY' 2>&1 | grep -v Warn | tee $OUT/graph-equal.txt
import torch
from trellis.checkpoint import load_causal_lm, load_tokenizer
from trellis.serving.engine import Engine
from trellis.serving.sampling import SamplingParams
tok = load_tokenizer(".whl/models/sft"); model = load_causal_lm(".whl/models/sft", device="cuda").eval()
prompts = [[5 + (7 * i + j) % 900 for j in range(8 + i % 24)] for i in range(64)]
sp = SamplingParams(temperature=0, max_tokens=32, logprobs=0, ignore_eos=True)
graph, hf = Engine(model, tok, max_batch_size=64), Engine(model, tok, max_batch_size=64, lean_decode=False)
a, b = graph.generate(prompts, sp), hf.generate(prompts, sp)
assert graph.graph_decoder is not None and graph.graph_decoder.captures == 1
same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
diff = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.logprobs, y.logprobs))
print(f"graph decode on cuda: {same}/64 rows with the same greedy tokens, max logprob difference {diff:.2e}")
PY
  timeout 120 python3 benchmarks/bench_lean_decode.py --device cuda --policy .whl/models/sft --rounds 10 \
    --out $OUT/decode-steps.json > $OUT/decode-steps.log 2>&1
  echo "== decode steps rc=$? t=$((SECONDS-T0))s"; grep -v Warn $OUT/decode-steps.log | tail -2
  mkdir -p /tmp/trl112 && cp -r /tmp/site/trl /tmp/trl112/
  LIMIT=200 ppo graph --peers trellis-shared-critic,trl --repeats 2
  LIMIT=90 ppo nograph --peers trellis-shared-critic --shared-critic-set cuda_graphs=false
  if [ "${MEMORY:-0}" = 1 ]; then  # rlhf.offload_frozen: the update's peak memory with and without
    timeout 120 python3 benchmarks/bench_rlhf_memory.py --tokenizer .whl/models/sft --device cuda \
      --out $OUT/rlhf-memory.json > $OUT/rlhf-memory.log 2>&1
    echo "== memory rc=$? t=$((SECONDS-T0))s"; tail -12 $OUT/rlhf-memory.log
  fi
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
