#!/usr/bin/env bash
# Install everything the package, its tests and the demo need (torch/torchvision from this machine's local wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"
python -m pip install --quiet --no-deps "easy-vqa==1.0"
