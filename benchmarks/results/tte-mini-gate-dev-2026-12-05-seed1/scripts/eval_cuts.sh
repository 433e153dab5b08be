#!/bin/bash
# evaluate the no-gate seed-1 unified model with each cut trace store
cd /work/main
for name in "$@"; do
  out=/work/exp/cut1/eval-$name
  [ -f $out/results.json ] && continue
  python -m tte_eval evaluate --model /work/exp/seed1a-nogate/published --tasks-dir /work/exp/seed1a/data/scene-tasks/test \
    --output $out --model-name unified-$name --batch-size 16 --traces /work/exp/cut1/$name > /work/exp/cut1/eval-$name.log 2>&1
  echo "$name done $(date)"
done
