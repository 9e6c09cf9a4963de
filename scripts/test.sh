#!/usr/bin/env bash
# The whole test suite: installs what it needs, starts (and stops) its own local Ray cluster, runs real vLLM on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Leave as soon as pytest has finished, with its status (see tests/conftest.py: native teardown once crashed after).
export RECONCILER_TEST_EXIT_AT_ONCE=1
exec .venv/bin/python -m pytest "$@"
