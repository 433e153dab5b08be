#!/usr/bin/env bash
# Issue 13 measurement on TTE-mini (CPU): the gate on the unified model whose head was trained with trace dropout.
set -euo pipefail
cd /work/gate-run
V=/work/run-v4/runs/tte-mini-v4
M=runs/gate/head-dropout/model
T=$V/data/scene-tasks/test
[ -f runs/gate/gate/model/config.json ] || python -m training.train_gate --model_path $M --data_config $V/data/embed.yaml \
    --output_dir runs/gate/gate --max_queries 384 --batch_size 16 --seed 0
G=runs/gate/gate/model
for think in never auto queries always; do
  [ -f runs/gate/eval-$think/results.json ] || python -m tte_eval evaluate --model $G --tasks-dir $T \
      --output runs/gate/eval-$think --model-name tte-mini-dropout-gated --batch-size 16 --think $think \
      --trace-cache runs/gate/traces.sqlite
done
# the published default model (head trained without trace dropout), without thinking: how far the modes agree
[ -f runs/gate/default-never/results.json ] || python -m tte_eval evaluate --model /work/main/models/tte-mini \
    --tasks-dir $T --output runs/gate/default-never --model-name tte-mini --batch-size 16 --think never
echo done
