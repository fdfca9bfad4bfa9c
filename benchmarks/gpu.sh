#!/usr/bin/env bash
set -euo pipefail; mkdir -p logs  # run from the repository root: the log goes to ./logs/
python "$(dirname "$0")/gpu.py" --device cuda "$@" 2>&1 | tee logs/bench-gpu.txt
