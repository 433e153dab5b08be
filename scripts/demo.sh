#!/usr/bin/env bash
# The main job: set up, build a tiny RANDOM-WEIGHT TTE model folder, then embed and rank with it through the CLI.
# The outputs show the pipeline working end to end; random weights mean the traces and scores are meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python examples/demo.py outputs/tiny-tte-random
