#!/usr/bin/env bash
# The same gate fitted for a held-out think rate of 50% (the goal), then evaluated under auto.
set -euo pipefail
cd /work/gate-run
while pgrep -f "runs/gate/run.sh" > /dev/null; do sleep 10; done
V=/work/run-v4/runs/tte-mini-v4
T=$V/data/scene-tasks/test
[ -f runs/gate/gate50/model/config.json ] || python -m training.train_gate --model_path runs/gate/head-dropout/model \
    --data_config $V/data/embed.yaml --output_dir runs/gate/gate50 --max_queries 384 --batch_size 16 --seed 0 \
    --think_rate 0.5
[ -f runs/gate/eval-auto50/results.json ] || python -m tte_eval evaluate --model runs/gate/gate50/model --tasks-dir $T \
    --output runs/gate/eval-auto50 --model-name tte-mini-dropout-gated-50 --batch-size 16 --think auto
echo done
