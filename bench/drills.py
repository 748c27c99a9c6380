"""Benchmark: failure drills during a boot storm (issue 11). Each drill is a storm of N fleet machines (default 200)
commissioned at once through the embedded stack (bench/fleet.py's site: two region replicas, one rack, simulated
Redfish BMCs), with one fault ``--fault-after`` seconds into it:

  none                 the storm alone, for comparison
  kill-region-replica  kill -9 region-1 (region-2 carries on alone)
  restart-nats         nats-server stopped, down --outage seconds, started again on the same store
  restart-postgres     PostgreSQL stopped (fast shutdown), down --outage seconds, started again
  lose-5%-packets      5 % of the frames lost each way on the rack's interface for the whole storm
  kill-one-of-two-racks  two racks serve the subnet (rack-2 in a namespace of its own); kill -9 rack-2's four
                       services; machines it was booting time out as PXE firmware does and boot again

For each: machines READY / FAILED / stuck, addresses leased to two machines, results lost, commission calls sent
again after a 5xx, and seconds from the fault until the last machine was READY. Goal: every machine READY, zero
duplicates, zero lost results, in every drill. The firmware boots from the network again after a failed boot
(at most 3 boots per power-on). Needs root.
The last line is ``drills with every machine READY and nothing lost: <k>/<n> (goal <n>/<n>)``.

    .venv/bin/python bench/drills.py --quick     # 40 machines, two drills, firmware waits times 0.25 (about a minute)
    .venv/bin/python bench/drills.py             # 200 machines per drill
"""

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

import httpx

from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.drills import Drill, DrillResult, run_drill
from metalbus.fleet.machine import MachineOptions, MachineResult
from metalbus.fleet.profiles import fleet_profiles
from metalbus.fleet.storm import StormError, storm_site
from metalbus.fleet.tftp_fetch import PXELINUX_TFTP_TIMEOUTS_S
from metalbus.stack.launcher import StackError
from storm_setup import private_stack_root

DEADLINE_S = 240.0
BOOT_ATTEMPTS = 3
QUICK_DRILLS = (Drill.RESTART_NATS, Drill.KILL_RACK)
QUICK_WAITS = 0.25
"""--quick shrinks the firmware's DHCP and TFTP waits: the drills' checks stay, their recovery times shrink."""


async def one_drill(drill: Drill, count: int, seed: int, root: Path, args: argparse.Namespace) -> DrillResult:
    waits = QUICK_WAITS if args.quick else 1.0
    firmware = MachineOptions(
        dhcp_policy=RetransmitPolicy(scale=waits),
        tftp_timeouts_s=tuple(wait * waits for wait in PXELINUX_TFTP_TIMEOUTS_S),
        firmware_s=args.firmware,
        boot_attempts=BOOT_ATTEMPTS,
    )
    async with storm_site(root / drill.value, fleet_profiles(seed, count), firmware, racks=drill.racks) as site:
        return await run_drill(site, drill, fault_after_s=args.fault_after, outage_s=args.outage, deadline_s=DEADLINE_S)


def row(result: DrillResult) -> str:
    recovered = f"{result.recovered_after_s:.1f}" if result.recovered_after_s is not None else "-"
    failed = result.run.statuses.get("failed_commissioning", 0)
    return (
        f"| {result.drill.value} | {result.run.count} | {result.run.ready} | {failed} | {result.stuck} "
        f"| {result.checks.duplicate_leases} | {len(result.checks.lost_results)} | {len(result.checks.mismatches)} "
        f"| {result.run.commission_retries} | {result.fault_at_s:.1f} | {recovered} |"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="40 machines; restart-nats and the rack kill; firmware waits times 0.25"
    )
    parser.add_argument("--count", type=int, default=None, help="machines per drill (default 200)")
    parser.add_argument("--drills", default=None, help="comma-separated drill names (default: all)")
    parser.add_argument("--fault-after", type=float, default=2.0, help="seconds into the storm")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds a restarted part stays down")
    parser.add_argument(
        "--firmware", type=float, default=1.5, help="firmware seconds before DHCP (the fault lands mid-boot)"
    )
    parser.add_argument("--seed", type=int, default=17)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    count = args.count or (40 if args.quick else 200)
    default = QUICK_DRILLS if args.quick else tuple(Drill)
    drills = [Drill(name) for name in args.drills.split(",")] if args.drills else list(default)
    if os.geteuid() != 0:
        print("bench/drills.py: needs root (namespace, veth, DHCP port 67, nftables)")
        print(f"drills with every machine READY and nothing lost: 0/{len(drills)} (goal {len(drills)}/{len(drills)})")
        return 1
    root = private_stack_root("bench-drills-")
    header = (
        "| drill | machines | READY | FAILED | stuck | duplicate leases | lost results | inventory mismatches "
        "| calls sent again | fault at s | READY s after the fault |"
    )
    lines = [header, "|" + "---|" * 11]
    passed = 0
    try:
        for number, drill in enumerate(drills):
            print(f"-- {drill.value}: {count} machines", flush=True)
            try:
                result = asyncio.run(one_drill(drill, count, args.seed + number, root, args))
            except (StormError, StackError, httpx.HTTPError, OSError) as error:
                lines.append(f"| {drill.value} | {count} | failed to run: {type(error).__name__}: {error} |")
                continue
            passed += result.zero_loss
            lines.append(row(result))
            print(lines[-1], flush=True)
            rebooted = sum(1 for o in result.checks.outcomes if o.failed_boots)
            print(
                f"   leases by rack {result.checks.leases_by_rack}; machines that booted again: {rebooted}; "
                f"power-ons after READY (sent to the disk): {result.checks.disk_boots}"
            )
            for outcome in [o for o in result.checks.outcomes if o.result is not MachineResult.READY][:5]:
                print(f"   {outcome.profile.boot_mac} {outcome.result.value} at {outcome.step}: {outcome.error or ''}")
    except KeyboardInterrupt:
        print("bench/drills.py: interrupted", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(["", *lines]))
    verdict = "meets" if passed == len(drills) else "short"
    goal = f"{len(drills)}/{len(drills)}"
    print(f"drills with every machine READY and nothing lost: {passed}/{len(drills)} (goal {goal}) {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
