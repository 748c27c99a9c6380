#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine (as root): install everything, then `metalbus demo` — build the boot
# files and the commissioning environment, create a lab of qemu VMs with IPMI BMCs, start the embedded stack serving
# DHCP on the lab, commission every VM to READY through the API and print their inventory.
# Extra arguments go to `metalbus demo` (e.g. --vms 3 --uefi 1, --state-dir DIR, --timeout 900).
# The stack and the lab keep running afterwards: `metalbus demo --down` stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
state_args=()
for ((i = 1; i <= $#; i++)); do
  case "${!i}" in
    --state-dir) j=$((i + 1)); state_args=(--state-dir "${!j}") ;;
    --state-dir=*) state_args=("${!i}") ;;
  esac
done
status=0
.venv/bin/metalbus demo "$@" || status=$?
echo "Inspect: .venv/bin/metalbus status ${state_args[*]}; .venv/bin/metalbus lab status ${state_args[*]}"
echo "Stop everything: .venv/bin/metalbus demo --down ${state_args[*]} (or: metalbus lab down; metalbus down)"
exit "$status"
