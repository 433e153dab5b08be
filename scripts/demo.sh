#!/usr/bin/env bash
# The main job: set up, build the default model TTE-mini (models/tte-mini) from its committed trained parts
# (assets/tte-mini) and the SmolLM2 GGUF, then ask it about held-out easy-VQA images and rendered scenes through the
# CLI: its reasoning traces and its rankings of candidate answers. TTE-mini is a toy for coloured shapes (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python examples/demo.py models/tte-mini
