#!/usr/bin/env bash
# The main job on the embedded default: install, start a local Ray cluster shaped like specs/ (GPUs simulated from
# the pool inventory when this machine has none), apply specs/, show what runs where, and ask every model once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# specs/ serves a tiny LLaMA built here (no download) next to two models Python packages ship: SmolLM2, a trained
# chat model that setup.sh converted from its GGUF, and the MiniLM embedding model.
[ -f .reconciler/models/tiny-llama/config.json ] || python -m reconciler.engines.tinymodel .reconciler/models/tiny-llama
reconciler validate specs/
reconciler up specs/
reconciler apply specs/ --yes
reconciler status
reconciler probe specs/
echo
echo "The cluster keeps running: 'reconciler status' to look, 'reconciler down' to stop it."
