#!/bin/bash
# Prepares what the GPU checks (gpu_checks.sh) need on a lent device machine that has no network: the
# Python packages its image lacks, as cp312 wheels, and the quickstart models the PPO benchmark runs on.
#   bash benchmarks/device/prepare.sh SFT_DIR REWARD_DIR
# SFT_DIR / REWARD_DIR: a quickstart run's sft/final and reward/final, the reward model trained with
# `--set reward.likelihood_term=false` (TRL's reward call reads the score head alone). Everything lands in
# .whl/ (git-ignored through .git/info/exclude); pass `carry: [".whl"]` to the device tool.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  typing_extensions==4.16.0 trl==1.12.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
if [ $# -eq 2 ]; then
  rm -rf .whl/models && mkdir -p .whl/models
  cp -r "$1" .whl/models/sft && cp -r "$2" .whl/models/reward
fi
du -sh .whl
