"""Benchmark: seconds from the commission call to READY of a qemu VM under TCG, split by step (issue 10, "Figures").

Its one job: run what `metalbus demo` runs - the boot files, a lab of qemu VMs with IPMI BMCs, the stack serving
DHCP on the lab's rack interface, machines made through the API - then commission each VM alone (one after the
other, so the 2 cores and rack-tftp's counters are its own) and print when each step first showed.

    .venv/bin/python bench/e2e.py --quick       # one BIOS VM, one round (~35 s with the stack's start)
    .venv/bin/python bench/e2e.py               # a BIOS and a UEFI VM, one round each (~1 min)
    .venv/bin/python bench/e2e.py --rounds 3    # ... three rounds each (READY -> commission again)

Needs root (network namespaces, taps, DHCP port 67 on the lab's interface only), qemu-system-x86, ipmi_sim and,
for UEFI, ovmf. Everything runs in a private state directory under /tmp with free ports for everything but DHCP, a
lab id ``e<4 hex>`` and a subnet ``10.251.<100-249>.0/24`` of its own. rack-tftp gets a metrics port
(``METALBUS_RACK_TFTP_METRICS_PORT``: the stack passes the operator's METALBUS_* variables to its components).

Where each step comes from: power on, firmware DHCP ACK (the first lease of the VM's MAC bound), results stored
and READY are bus events (``events.power|lease|result|machine.*``, at the time the region stamped them); qemu
running is the BMC's ``machine.pid``; the iPXE config and the kernel+initrd are rack-tftp's HTTP boot counters
(first request; bytes sent >= vmlinuz + initrd.img since the commission call); the kernel, /init, the ephemeral
lease, the metadata read and the power off are lines of the VM's serial log (truncated before each round). Times
are seconds after the commission call was sent. The lab and the stack are removed whatever ends the run (Ctrl-C
and SIGTERM too). The last line printed is ``BIOS commission to READY: <s> s (goal < 60 s) meets`` (or
``short``; the median of the rounds).
"""

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import httpx

from e2e_steps import (
    POWER_OFF,
    READY,
    STEPS,
    LocalWatch,
    Target,
    Timeline,
    events_of,
    http_boot_totals,
    wait_powered_off,
)
from metalbus.cli.demo import (
    IMAGE_DIR,
    DemoError,
    api_key,
    build_boot_files,
    call,
    enrol,
    fresh_lab,
    register_boot_resources,
    serve_lab_subnet,
    start_stack,
    tear_down_everything,
)
from metalbus.lab.lab import LabPaths, LabRecord, bmc_passwords
from metalbus.lab.topology import LabSpec
from metalbus.stack.config import StackLayout, StackSettings

GOAL_S = 60.0
READY_TIMEOUT_S = 300.0
POWER_OFF_TIMEOUT_S = 30.0
STACK_PORTS = (
    "NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "TFTP_PORT", "RACK_HTTP_PORT",
    "APT_PROXY_PORT", "DNS_PORT", "SYSLOG_PORT",
)  # fmt: skip
OVMF = Path("/usr/share/OVMF")


@dataclass(frozen=True)
class Round:
    """One VM's commissioning: which VM, which round, what was seen."""

    vm: str
    firmware: str
    number: int
    timeline: Timeline


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def private_ports() -> int:
    """Free ports for the stack and rack-tftp's metrics, in this process's environment (the stack's components
    inherit METALBUS_* variables); returns rack-tftp's metrics port."""
    os.environ.update({f"METALBUS_STACK_{name}": str(free_port()) for name in STACK_PORTS})
    tftp_metrics = free_port()
    os.environ["METALBUS_RACK_TFTP_METRICS_PORT"] = str(tftp_metrics)
    return tftp_metrics


async def commission_once(
    client: httpx.AsyncClient, settings: StackSettings, target: Target, metrics_port: int
) -> Timeline:
    """Commission ``target``'s machine and watch it until it settles (or the timeout), then until it powers off."""
    if not await wait_powered_off(target, POWER_OFF_TIMEOUT_S):
        raise DemoError(f"{target.name} is still running from the last round")
    target.serial_log.write_bytes(b"")
    timeline = Timeline()
    async with events_of(f"nats://{settings.host}:{settings.nats_port}", target, timeline):
        watch = LocalWatch(target, timeline, metrics_port)
        watch.baseline = await asyncio.to_thread(http_boot_totals, metrics_port)
        timeline.started = time.time()
        await call(client, "POST", f"/machines/{target.system_id}/commission", {})
        await watch.until(timeline.settled, READY_TIMEOUT_S)
        if timeline.final_status is not None:
            await watch.until(lambda: POWER_OFF in timeline.marks, POWER_OFF_TIMEOUT_S)
    return timeline


def targets_of(record: LabRecord, machines: dict[str, str], boot_root: Path) -> list[Target]:
    images = boot_root / IMAGE_DIR
    image_bytes = sum((images / name).stat().st_size for name in ("vmlinuz", "initrd.img"))
    return [
        Target(vm.name, vm.firmware, machines[vm.name], vm.mac, vm.serial_log, vm.machine_pid_file, image_bytes)
        for vm in record.vms
    ]


async def measure(state_dir: Path, spec: LabSpec, rounds: int, metrics_port: int) -> list[Round]:
    """The demo's steps up to the machines, then every VM commissioned ``rounds`` times, one at a time."""
    layout = StackLayout(state_dir)
    print("bench/e2e.py: building the boot files and the commissioning environment ...", flush=True)
    build_boot_files(layout)
    record = fresh_lab(spec, state_dir)
    print(f"bench/e2e.py: lab {record.lab_id}: {len(record.vms)} VMs on {record.subnet}", flush=True)
    settings = await start_stack(state_dir, record.rack_interface)
    headers = {"Authorization": f"Bearer {await api_key(settings)}"}
    results: list[Round] = []
    async with httpx.AsyncClient(base_url=f"http://{settings.host}:{settings.api_port}", headers=headers) as client:
        await serve_lab_subnet(client, record)
        await register_boot_resources(client)
        passwords = bmc_passwords(LabPaths(state_dir))
        machines = {vm.name: await enrol(client, vm, passwords[vm.name]) for vm in record.vms}
        for number in range(1, rounds + 1):
            for target in targets_of(record, machines, layout.boot_root):
                timeline = await commission_once(client, settings, target, metrics_port)
                results.append(Round(target.name, target.firmware, number, timeline))
                print_round(results[-1])
    return results


# --- the report ----------------------------------------------------------------------------------------------------


def print_round(result: Round) -> None:
    timeline = result.timeline
    print(f"\n{result.vm} ({result.firmware.upper()}), round {result.number}: {timeline.final_status or 'not settled'}")
    print(f"  {'step':<36} {'s after commission':>18} {'+s':>7}")
    previous = 0.0
    for step in sorted(STEPS, key=lambda name: timeline.marks.get(name, float("inf"))):
        seconds = timeline.marks.get(step)
        if seconds is None:
            print(f"  {step:<36} {'-':>18} {'-':>7}")
            continue
        print(f"  {step:<36} {seconds:>18.1f} {seconds - previous:>7.1f}")
        previous = seconds
    sys.stdout.flush()


def ready_seconds(results: list[Round], firmware: str) -> list[float]:
    """Seconds to READY of every round of ``firmware`` (a round that did not reach READY counts as infinite)."""
    return [result.timeline.marks.get(READY, float("inf")) for result in results if result.firmware == firmware]


def report(results: list[Round]) -> bool:
    """The summary lines; the last one is the BIOS figure. True when it meets the goal."""
    print()
    for firmware in ("uefi", "bios"):
        seconds = ready_seconds(results, firmware)
        if not seconds:
            continue
        shown = " ".join(f"{value:.1f}" for value in seconds)
        verdict = "meets" if statistics.median(seconds) < GOAL_S else "short"
        line = f"{firmware.upper()} commission to READY: {statistics.median(seconds):.1f} s (goal < {GOAL_S:g} s)"
        if firmware == "uefi":
            print(f"{line} {verdict} (rounds: {shown})")
        else:
            print(f"BIOS rounds: {shown}")
            print(f"{line} {verdict}", flush=True)
            return verdict == "meets"
    print(f"BIOS commission to READY: inf s (goal < {GOAL_S:g} s) short", flush=True)
    return False


# --- the whole run -------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one BIOS VM, one round")
    parser.add_argument("--rounds", type=int, default=1, help="commissionings of each VM (default 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be positive")
    return args


def preconditions(uefi: bool) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, taps, DHCP port 67)"
    for program in ("qemu-system-x86_64", "ipmi_sim"):
        if shutil.which(program) is None:
            return f"{program} is not installed (scripts/setup.sh)"
    if uefi and not OVMF.exists():
        return "ovmf is not installed (scripts/setup.sh)"
    return None


def interrupted(signum: int, _: object) -> None:
    raise KeyboardInterrupt  # SIGTERM like Ctrl-C: the finally below tears down


def main() -> int:
    args = parse_args()
    spec_uefi = 0 if args.quick else 1
    problem = preconditions(uefi=spec_uefi > 0)
    if problem is not None:
        print(f"bench/e2e.py: cannot run: {problem}")
        print(f"BIOS commission to READY: inf s (goal < {GOAL_S:g} s) short")
        return 1
    signal.signal(signal.SIGTERM, interrupted)
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    state_dir = root / "state"
    subnet = IPv4Network(f"10.251.{secrets.randbelow(150) + 100}.0/24")
    spec = LabSpec(lab_id=f"e{secrets.token_hex(2)}", vms=1 + spec_uefi, uefi=spec_uefi, subnet=subnet)
    results: list[Round] = []
    try:
        results = asyncio.run(measure(state_dir, spec, args.rounds, private_ports()))
    except KeyboardInterrupt:
        print("bench/e2e.py: interrupted", flush=True)
    except (DemoError, httpx.HTTPError) as error:
        print(f"bench/e2e.py: failed: {error}", flush=True)
    finally:
        tear_down_everything(state_dir)
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
