#!/usr/bin/env bash
# Install lora-rl with its training and test extras on a CPU machine.
# torch is pinned and installed first: an unpinned torch (or one pulled in by another package)
# downloads several GB of CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
