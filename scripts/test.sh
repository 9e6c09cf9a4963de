#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts (and stops) its own local Ray cluster, runs real vLLM on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
