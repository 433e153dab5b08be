#!/usr/bin/env bash
# Seed 1: the student's embedder initialised from the SFT'd reasoner (the unified backbone) instead of the grid model;
# everything else as the recipe's student (same traces, data, budget, seed).
set -euo pipefail
cd /work/main
E=/work/exp/seed1-sft-embedder
R=/work/exp/seed1
[ -f $E/init/config.json ] || python -m training.init_model --output_dir $E/init --dtype float32 --backbone $R/reasoner/model --variant student --reasoner $R/reasoner/model --max_new_tokens 64
[ -f $E/model/config.json ] || python -m training.train_embedder --output_dir $E --model_path $E/init --top_layers 4 --traces $R/traces/student --trace_sides query --data_config $R/data/embed.yaml --per_device_batch_size 16 --chunk_size 16 --max_steps 150 --learning_rate 0.0003 --lr_scheduler cosine --warmup_steps 15 --save_steps 50 --seed 1 --mixed_precision auto --logging_steps 10
python -m tte_eval evaluate --model $E/model --tasks-dir $R/data/scene-tasks/test --output $E/eval --model-name student-sft-embedder --batch-size 16
echo DONE
