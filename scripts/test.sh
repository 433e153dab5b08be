#!/usr/bin/env bash
# The test command: set up, then run the whole suite (CPU, tiny random-weight models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m pytest -q "$@"
