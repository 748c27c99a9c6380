#!/usr/bin/env bash
# The main job on a fresh machine: install everything, start the embedded stack, report its health.
# Extra arguments go to `metalbus up` (e.g. --state-dir DIR, --api-port N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/metalbus up "$@"
state_args=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --state-dir) j=$((i + 1)); state_args=(--state-dir "${!j}") ;;
    --state-dir=*) state_args=("${!i}") ;;
  esac
done
.venv/bin/metalbus status "${state_args[@]}"
echo "Stop it with: .venv/bin/metalbus down ${state_args[*]}"
