#!/usr/bin/env bash
# The project's test command (README, .ci/run): the fast tier, then the slow tier.
# pytest exits 5 when a tier selects no tests; an empty tier is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."

tier() {
  echo "== pytest $* =="
  python -m pytest -q "$@"
  local code=$?
  if [ "$code" -eq 5 ]; then
    echo "(no tests in this tier)"
    return 0
  fi
  return "$code"
}

tier -m "not slow" && tier -m slow || exit $?

# vLLM lives in its own venv (tools/vllm_tier.sh: ~4 min to install the first time, then reused).
# LORA_RL_SKIP_VLLM=1 leaves it out, e.g. on a machine without room for it.
if [ "${LORA_RL_SKIP_VLLM:-0}" != "1" ]; then
  bash tools/vllm_tier.sh
fi
