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

tier -m "not slow" && tier -m slow
