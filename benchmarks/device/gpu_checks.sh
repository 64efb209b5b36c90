#!/bin/bash
# The GPU checks of issues 3 and 7 in one device call (about 6 minutes on an H200, start not counted):
#   run(command="bash benchmarks/device/gpu_checks.sh", carry=[".whl"], timeout_s=560)
# after benchmarks/device/prepare.sh. Writes logs and JSON under $OUT (8 files at most come back).
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRELLIS_NO_PROGRESS=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/gpu.txt
T0=$SECONDS
mfu() { # name, run dir, extra args (the HF side reads the tokenizer a Trellis run left in its run dir)
  local name=$1 dir=$2; shift 2
  timeout ${LIMIT:-200} python3 benchmarks/bench_pretrain.py --preset llama3.2-1b --vocab-size 128256 --seq-len 2048 \
    --precision bf16 --fast --threads 8 "$@" --out $dir > $OUT/mfu-$name.log 2>&1
  echo "== mfu $name rc=$? t=$((SECONDS-T0))s"; grep RESULT $OUT/mfu-$name.log | cut -c1-400
  [ "${name:0:1}" = t ] && [ -f $dir/pretrain/metrics.jsonl ] && cp $dir/pretrain/metrics.jsonl $OUT/metrics-$name.jsonl
}
LIMIT=170 mfu t8x4 /tmp/mfu-a --mode trellis --batch 8 --accum 4 --steps 10 --skip 3
if [ -d .whl/models/sft ]; then
  mkdir -p /tmp/trl112 && cp -r /tmp/site/trl /tmp/trl112/
  timeout 170 python3 benchmarks/bench_ppo.py --device cuda --policy .whl/models/sft \
    --reward-model .whl/models/reward --episodes 1024 --lr 1e-4 --eval-prompts 128 --repeats 1 --micro-batch-size 32 \
    --peers trellis-shared-critic,trl --shared-critic-set value_warmup_rollouts=2 --shared-critic-set fuse_scoring_pass=true \
    --threads 8 --out $OUT/ppo-gpu.json > $OUT/ppo-gpu.log 2>&1
  echo "== ppo rc=$? t=$((SECONDS-T0))s"
fi
LIMIT=110 mfu hf8x4 /tmp/mfu-a --mode hf --fast-hf --batch 8 --accum 4 --steps 10 --skip 3
echo "== done t=$((SECONDS-T0))s"
