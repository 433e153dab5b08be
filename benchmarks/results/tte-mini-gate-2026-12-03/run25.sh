#!/usr/bin/env bash
# Trace dropout 0.25 instead of 0.5: the head, its gate (best held-out accuracy), and never / queries / auto.
set -euo pipefail
cd /work/gate-run
while pgrep -f "runs/gate/run50.sh" > /dev/null; do sleep 10; done
V=/work/run-v4/runs/tte-mini-v4
T=$V/data/scene-tasks/test
[ -f runs/gate/head-dropout25/model/config.json ] || python -m training.train_head \
    --model_path $V/variants/unified/init --data_config $V/data/embed.yaml --traces runs/gate/traces-student \
    --trace_sides query --per_device_batch_size 16 --chunk_size 16 --max_steps 150 --learning_rate 0.0003 \
    --lr_scheduler cosine --warmup_steps 15 --save_steps 50 --seed 0 --mixed_precision bf16 --trace_dropout 0.25 \
    --output_dir runs/gate/head-dropout25
[ -f runs/gate/gate25/model/config.json ] || python -m training.train_gate --model_path runs/gate/head-dropout25/model \
    --data_config $V/data/embed.yaml --output_dir runs/gate/gate25 --max_queries 384 --batch_size 16 --seed 0
for think in never auto queries; do
  [ -f runs/gate/eval25-$think/results.json ] || python -m tte_eval evaluate --model runs/gate/gate25/model \
      --tasks-dir $T --output runs/gate/eval25-$think --model-name tte-mini-dropout25-gated --batch-size 16 \
      --think $think
done
echo done
