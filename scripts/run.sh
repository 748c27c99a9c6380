#!/usr/bin/env bash
# The main job on a fresh machine: install everything, fill the rack's boot root with bootloaders from Debian
# packages, start the embedded stack, report its health.
# Extra arguments go to `metalbus up` (e.g. --state-dir DIR, --api-port N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
state_dir=${METALBUS_STACK_STATE_DIR:-.metalbus}
state_args=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --state-dir) j=$((i + 1)); state_dir=${!j}; state_args=(--state-dir "$state_dir") ;;
    --state-dir=*) state_dir=${!i#--state-dir=}; state_args=("${!i}") ;;
  esac
done
bash scripts/boot-files.sh "$state_dir/boot"
.venv/bin/metalbus up "$@"
.venv/bin/metalbus status "${state_args[@]}"
echo "Stop it with: .venv/bin/metalbus down ${state_args[*]}"
