#!/usr/bin/env bash
# Seed 1: the no-thinking embedder initialised from the SFT'd reasoner instead of the grid model (as the other run
# did for the student); everything else as the recipe's no-thinking variant.
set -euo pipefail
cd /work/main
E=/work/exp/seed1-sft-nothink
R=/work/exp/seed1
[ -f $E/init/config.json ] || python -m training.init_model --output_dir $E/init --dtype float32 --backbone $R/reasoner/model --variant teacher --think never
[ -f $E/model/config.json ] || python -m training.train_embedder --output_dir $E --model_path $E/init --top_layers 4 --trace_sides "" --data_config $R/data/embed.yaml --per_device_batch_size 16 --chunk_size 16 --max_steps 150 --learning_rate 0.0003 --lr_scheduler cosine --warmup_steps 15 --save_steps 50 --seed 1 --mixed_precision auto --logging_steps 10
python -m tte_eval evaluate --model $E/model --tasks-dir $R/data/scene-tasks/test --output $E/eval --model-name no-thinking-sft-backbone --batch-size 16
echo DONE
