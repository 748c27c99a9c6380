"""A qemu machine is commissioned from COMMISSIONING to READY by our racks, with nothing faked on the way.

Every hop is the real software speaking the real protocol: the region (in-process, real NATS and PostgreSQL);
rack-dhcp and rack-tftp as their ``__main__`` runs them (``run_rack_dhcp``, ``run_rack_tftp`` with its /MAAS
metadata app on a free port of the rack's address); qemu's own firmware (SeaBIOS + the iPXE ROM, or OVMF + the
NIC's iPXE EFI ROM) fetching ``ipxe.cfg-<mac>`` and the kernel and initrd over HTTP; the commissioning
environment that ``scripts/build-ephemeral.sh`` builds from Debian packages, which reads its credentials from the
kernel command line, fetches the region's ``commissioning_script.sh`` as its user-data, posts the inventory and
signals OK, then powers the VM off.

The machine has the ``manual`` power type (the region powers nothing), so the test starts qemu itself after the
commission call. Proof is observable only: the machine's status, the inventory the region stored (matching the
VM's qemu configuration: cores, memory, disk size, NIC MAC, and the LLDP neighbour the lab's advertiser plays on
the VM's tap, heard by the image's tcpdump) and the stored script result; the environment's syslog (kernel and
/init lines, busybox syslogd to the ``metalbus.syslog`` the region put on its command line) relayed by rack-proxy's
relay and stored against the machine. The time from the
commission call to READY and its split (first DHCP ACK, kernel on the console, /init, the ephemeral lease, the
metadata read, READY) are printed, not asserted.

Topology: the network namespace, veth, bridge and tap of ``test_rack_dhcp_qemu`` (the rack on the veth's
root-namespace end at ``<prefix>.2``), with router advertisements so iPXE does not wait for IPv6.
"""

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.boot import BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import (
    BootPurpose,
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineQuery,
    MachineStatus,
    PowerType,
)
from metalbus.contracts.metadata import HardwareInventory
from metalbus.contracts.scripts import CommissioningScript
from metalbus.subjects import (
    BOOT_RESOURCE_SET,
    MACHINE_ACTION,
    MACHINE_CREATE,
    MACHINE_GET,
    MACHINE_INVENTORY,
    MACHINE_RESULTS,
    SCRIPT_SET,
)
from metalbus_rack_dhcp.__main__ import run_rack_dhcp
from metalbus_rack_dhcp.server import ServerCounters
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_rack_proxy.syslog_relay import SyslogRelay, SyslogRelayConfig, region_sender
from metalbus_rack_tftp.__main__ import run_rack_tftp
from metalbus_rack_tftp.settings import RackTftpSettings
from tests.conftest import NatsServer, free_port
from tests.integration.test_rack_dhcp_clients import Link, link, serve_subnet
from tests.integration.test_rack_dhcp_qemu import (
    OVMF_CODE,
    OVMF_VARS,
    QEMU,
    guest_mac,
    router_advertisements,
    tap,
)
from tests.integration.test_rack_services_running import scrape
from tests.integration.test_region import eventually, running_region

__all__ = ["link", "router_advertisements", "tap"]  # fixtures of the rack-dhcp qemu tests

REPOSITORY = Path(__file__).resolve().parents[2]
BOOT_FILES_SCRIPT = REPOSITORY / "scripts" / "boot-files.sh"
BUILD_EPHEMERAL_SCRIPT = REPOSITORY / "scripts" / "build-ephemeral.sh"
IMAGE_DIR = "images/amd64/ephemeral"
KERNEL_PARAMS = "console=ttyS0 panic=-1"
RACK_ID = "rack-1"
GUEST_CPUS = 2
GUEST_MEMORY_MIB = 512
GUEST_DISK_BYTES = 1 << 30
READY_TIMEOUT_S = 150.0
LAB_SWITCH = "metalbus-e2e-switch"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(
        not list(Path("/boot").glob("vmlinuz-*")), reason="linux-image-amd64 is not installed (scripts/setup.sh)"
    ),
    pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static is not installed (scripts/setup.sh)"),
]


@dataclass(frozen=True)
class Firmware:
    """How a VM of one boot architecture is started, and what it runs on."""

    architecture: Architecture
    nic_model: str
    machine_type: str
    ovmf: bool

    def qemu_arguments(self, scratch: Path) -> list[str]:
        arguments = ["-machine", self.machine_type]
        if self.ovmf:
            variables = scratch / "OVMF_VARS_4M.fd"
            shutil.copyfile(OVMF_VARS, variables)
            arguments += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
            arguments += ["-drive", f"if=pflash,format=raw,unit=1,file={variables}"]
        return arguments


BIOS = Firmware(Architecture.AMD64_BIOS, "virtio-net-pci", "pc", ovmf=False)
UEFI = Firmware(Architecture.AMD64_UEFI, "e1000", "q35", ovmf=True)


# --- The boot root: boot-files.sh's loaders and the commissioning environment ------------------------------------


@pytest.fixture
def boot_root(tmp_path: Path) -> Path:
    root = tmp_path / "boot"
    subprocess.run(["bash", str(BOOT_FILES_SCRIPT), str(root)], check=True, capture_output=True, timeout=120)
    built = subprocess.run(
        ["bash", str(BUILD_EPHEMERAL_SCRIPT), str(root / IMAGE_DIR)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.stdout.strip() == str(root / IMAGE_DIR)
    return root


def build_ephemeral(out_dir: Path) -> None:
    subprocess.run(["bash", str(BUILD_EPHEMERAL_SCRIPT), str(out_dir)], check=True, capture_output=True, timeout=120)


def modification_times(out_dir: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(out_dir.iterdir())}


def archive_members(initrd: Path) -> set[str]:
    unpacked = subprocess.run(["gzip", "-dc", str(initrd)], check=True, capture_output=True, timeout=30).stdout
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=unpacked, check=True, capture_output=True, timeout=30)
    return set(listing.stdout.decode().split())


def test_the_environment_is_built_once_and_rebuilt_when_its_inputs_change(tmp_path: Path) -> None:
    out_dir = tmp_path / "ephemeral"
    build_ephemeral(out_dir)
    first = modification_times(out_dir)

    build_ephemeral(out_dir)
    unchanged = modification_times(out_dir)
    (out_dir / "inputs.sha256").write_text("the stamp of other inputs\n")
    build_ephemeral(out_dir)
    rebuilt = modification_times(out_dir)

    assert set(first) == {"vmlinuz", "initrd.img", "inputs.sha256"}
    assert unchanged == first
    assert all(rebuilt[name] > first[name] for name in first)
    assert (out_dir / "inputs.sha256").read_text() != "the stamp of other inputs\n"
    kernel = max(Path("/boot").glob("vmlinuz-*"), key=lambda path: [int(n) for n in re.findall(r"\d+", path.name)])
    assert (out_dir / "vmlinuz").read_bytes() == kernel.read_bytes()
    members = archive_members(out_dir / "initrd.img")
    modules = {Path(member).name for member in members if member.endswith(".ko")}
    assert {"init", "bin/busybox", "bin/sh", "sbin/udhcpc", "usr/share/udhcpc/default.script"} <= members
    assert any(member.endswith("/modules.dep") for member in members)
    assert {"e1000.ko", "virtio_net.ko", "virtio_pci.ko", "net_failover.ko", "failover.ko", "virtio_blk.ko"} <= modules


async def test_the_environment_powers_the_machine_off_when_it_cannot_commission(tmp_path: Path) -> None:
    """No NIC, no metadata URL: /init says why, and the VM still powers itself off (exit status 0)."""
    assert QEMU is not None
    out_dir = tmp_path / "ephemeral"
    build_ephemeral(out_dir)
    console = tmp_path / "console.log"
    argv = [
        *(QEMU, "-accel", "tcg", "-nodefaults", "-display", "none", "-no-reboot", "-m", str(GUEST_MEMORY_MIB)),
        *("-serial", f"file:{console}", "-kernel", str(out_dir / "vmlinuz"), "-initrd", str(out_dir / "initrd.img")),
        *("-append", KERNEL_PARAMS),
    ]
    qemu = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    try:
        exit_status = await asyncio.wait_for(qemu.wait(), 60)
    finally:
        if qemu.returncode is None:
            qemu.kill()
            await qemu.wait()
    text = console_text(console)

    assert exit_status == 0, text[-3000:]
    assert "metalbus-ephemeral: no network interface" in text
    assert "metalbus-ephemeral: powering off" in text


# --- The rack: rack-dhcp and rack-tftp as their __main__ runs them ---------------------------------------------


@dataclass
class Rack:
    bus: Bus
    dhcp_counters: ServerCounters
    tftp_metrics_port: int
    image_bytes: int
    """vmlinuz + initrd.img: what the HTTP boot server has sent once the VM has its kernel and initrd."""
    database_dsn: str


@contextlib.asynccontextmanager
async def running(service: Coroutine[Any, Any, None], stop: asyncio.Event) -> AsyncIterator[None]:
    task = asyncio.create_task(service)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def register_ephemeral_image(bus: Bus, architecture: Architecture) -> None:
    """The commissioning and enlistment resources of ``architecture`` point at the built environment."""
    for purpose in (BootPurpose.COMMISSIONING, BootPurpose.ENLISTMENT):
        resource = BootResource(
            architecture=architecture,
            purpose=purpose,
            kernel=f"{IMAGE_DIR}/vmlinuz",
            initrd=f"{IMAGE_DIR}/initrd.img",
            kernel_params=KERNEL_PARAMS,
        )
        await eventually(partial(bus.request, BOOT_RESOURCE_SET, resource, timeout=5), lambda _: True, timeout=20)


@pytest.fixture
async def rack(
    nats_server: NatsServer, database_dsn: str, bus: Bus, link: Link, boot_root: Path
) -> AsyncIterator[Rack]:
    http_port = free_port()  # rack-dhcp names it in iPXE's URL, the region in the metadata URL
    syslog_port = free_port()  # the region names it on the command line as metalbus.syslog
    tftp_settings = RackTftpSettings(
        nats_url=nats_server.url,
        rack_id=RACK_ID,
        listen_address=str(link.ip(2)),
        port=free_port(),  # the iPXE path asks HTTP only
        http_port=http_port,
        syslog_port=syslog_port,
        boot_root=boot_root,
        metrics_port=free_port(),
    )
    relay = SyslogRelay(
        RACK_ID, region_sender(bus), SyslogRelayConfig(host=str(link.ip(2)), ports=(syslog_port,), batch_interval_s=0.2)
    )
    dhcp_settings = RackDhcpSettings(
        nats_url=nats_server.url, rack_id=RACK_ID, serve_interfaces=[link.server_interface], http_port=http_port
    )
    counters = ServerCounters()
    tftp_stop, dhcp_stop, relay_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with running_region(nats_server, database_dsn, "r1"):
        await serve_subnet(bus, link, 600)
        for firmware in (BIOS, UEFI):
            await register_ephemeral_image(bus, firmware.architecture)
        async with (
            running(run_rack_tftp(tftp_settings, tftp_stop), tftp_stop),
            running(run_rack_dhcp(dhcp_settings, dhcp_stop, counters), dhcp_stop),
            running(relay.run(relay_stop), relay_stop),
        ):
            image_bytes = sum((boot_root / IMAGE_DIR / name).stat().st_size for name in ("vmlinuz", "initrd.img"))
            yield Rack(bus, counters, tftp_settings.metrics_port, image_bytes, database_dsn)


@pytest.fixture
async def lldp_neighbour(link: Link, tap: str) -> AsyncIterator[str]:
    """The lab's advertiser in the link's namespace: an LLDP frame a second on the VM's tap (chassis id = the
    tap's MAC, port id = the tap's name, system name ``LAB_SWITCH``); stopped by PID. Yields the tap's MAC."""
    bridge = "mbb" + link.namespace.removeprefix("mbn")
    process = await asyncio.create_subprocess_exec(
        *("ip", "netns", "exec", link.namespace, sys.executable, "-m", "metalbus.lab.advertiser"),
        *(bridge, LAB_SWITCH, f"{tap}=qemu-1"),
    )
    try:
        mac = await asyncio.to_thread(
            subprocess.run,
            ["ip", "-n", link.namespace, "-br", "link", "show", tap],
            check=True,
            capture_output=True,
            text=True,
        )
        yield mac.stdout.split()[2]
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


async def machine_events(dsn: str, system_id: str) -> dict[str, list[dict[str, Any]]]:
    """The machine's events in the outbox table, by kind (``events.<kind>.<system_id>``)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT subject, payload FROM events WHERE subject LIKE 'events.%.' || $1 ORDER BY sequence", system_id
        )
    finally:
        await conn.close()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_kind.setdefault(row["subject"].split(".")[1], []).append(json.loads(row["payload"]))
    return by_kind


async def syslog_lines_of(dsn: str, system_id: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT concat_ws(': ', app_name, text) AS line FROM syslog_lines WHERE system_id = $1 ORDER BY line_id",
            system_id,
        )
    finally:
        await conn.close()
    return [row["line"] for row in rows]


# --- The VM and the timeline of its commissioning ---------------------------------------------------------------


@dataclass
class Timeline:
    """Seconds after the commission call at which each step was first seen."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, step: str) -> None:
        self.marks.setdefault(step, time.monotonic() - self.started)

    def report(self) -> str:
        steps = sorted(self.marks.items(), key=lambda item: item[1])
        return " | ".join(f"{step} {seconds:.1f} s" for step, seconds in steps)


CONSOLE_STEPS = {
    "kernel booting": "Linux version",
    "/init": "metalbus-ephemeral: started",
    "ephemeral DHCP lease": "metalbus-ephemeral: leased ",
    "metadata read": "user-data read from",
    "user-data done": "user-data exited with",
    "power off": "reboot: Power down",
}


def console_text(console: Path) -> str:
    return console.read_text(errors="replace") if console.exists() else ""


async def watch(timeline: Timeline, rack: Rack, console: Path, stop: asyncio.Event) -> None:
    """Mark each step as it shows: the rack's first DHCP ACK, the console lines of the guest."""
    while not stop.is_set():
        if rack.dhcp_counters.replied["ACK"]:
            timeline.mark("firmware DHCP ACK")
        served = await asyncio.to_thread(scrape, rack.tftp_metrics_port)
        if sum(
            value for name, value in served.items() if name.startswith("metalbus_rack_tftp_http_boot_bytes_sent")
        ) >= (rack.image_bytes):
            timeline.mark("kernel+initrd sent (HTTP)")
        text = console_text(console)
        for step, needle in CONSOLE_STEPS.items():
            if needle in text:
                timeline.mark(step)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.2)


@contextlib.asynccontextmanager
async def virtual_machine(
    link: Link, tap: str, mac: str, firmware: Firmware, scratch: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A VM booting from its NIC, with a blank disk; serial console to ``scratch/console.log``; killed by PID."""
    assert QEMU is not None
    disk = scratch / "disk.raw"
    with disk.open("wb") as blank:
        blank.truncate(GUEST_DISK_BYTES)
    argv = [
        *("ip", "netns", "exec", link.namespace, QEMU, "-accel", "tcg", "-nodefaults", "-display", "none"),
        *("-m", str(GUEST_MEMORY_MIB), "-smp", str(GUEST_CPUS), "-no-reboot"),
        *("-serial", f"file:{scratch / 'console.log'}", *firmware.qemu_arguments(scratch)),
        *("-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no"),
        *("-device", f"{firmware.nic_model},netdev=net0,mac={mac}", "-boot", "n"),
        *("-drive", f"file={disk},format=raw,if=virtio"),
    ]
    output = (scratch / "qemu.log").open("wb")
    process = await asyncio.create_subprocess_exec(*argv, stdout=output, stderr=asyncio.subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 10)
        output.close()
        for log in (scratch / "console.log", scratch / "qemu.log"):
            if log.exists():
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-6000:]}")


async def machine_status(bus: Bus, system_id: str) -> Machine:
    return await bus.request(MACHINE_GET, MachineQuery(system_id=system_id), timeout=5)


async def until_commissioning_ends(bus: Bus, system_id: str, qemu: asyncio.subprocess.Process) -> Machine:
    """Poll the machine until it leaves COMMISSIONING (bounded by the caller); a VM that died early is not READY."""
    powered_off_at: float | None = None
    while True:
        machine = await machine_status(bus, system_id)
        if machine.status is not MachineStatus.COMMISSIONING:
            return machine
        if qemu.returncode is not None:
            powered_off_at = powered_off_at or time.monotonic()
            assert time.monotonic() - powered_off_at < 10, f"the VM stopped ({qemu.returncode}), still COMMISSIONING"
        await asyncio.sleep(0.2)


@pytest.mark.usefixtures("router_advertisements")
@pytest.mark.parametrize("firmware", [BIOS, UEFI], ids=["bios", "uefi"])
async def test_a_qemu_machine_is_commissioned_to_ready_and_its_inventory_matches_the_vm(
    rack: Rack, link: Link, tap: str, lldp_neighbour: str, firmware: Firmware, tmp_path: Path
) -> None:
    if firmware.ovmf and not OVMF_CODE.exists():
        pytest.skip("ovmf is not installed (scripts/setup.sh installs it)")
    bus, mac = rack.bus, guest_mac()
    created = MachineCreate(
        hostname="qemu-1", architecture=firmware.architecture, boot_mac=mac, power_type=PowerType.MANUAL
    )
    machine = await bus.request(MACHINE_CREATE, created, timeout=10)

    commission = MachineActionRequest(system_id=machine.system_id, action=MachineAction.COMMISSION)
    timeline = Timeline()
    assert (await bus.request(MACHINE_ACTION, commission, timeout=15)).status is MachineStatus.COMMISSIONING
    stop_watching = asyncio.Event()
    watcher = asyncio.create_task(watch(timeline, rack, tmp_path / "console.log", stop_watching))
    try:
        async with virtual_machine(link, tap, mac, firmware, tmp_path) as qemu, asyncio.timeout(READY_TIMEOUT_S):
            timeline.mark("qemu started")
            final = await until_commissioning_ends(bus, machine.system_id, qemu)
            timeline.mark(final.status.value)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(qemu.wait(), 15)  # the environment powers itself off
            powered_off = qemu.returncode == 0
    finally:
        stop_watching.set()
        await watcher
        print(f"{firmware.architecture.value}: commission call to {timeline.report()}")

    assert final.status is MachineStatus.READY, final.status_reason
    assert powered_off, "the commissioning environment did not power the VM off"
    inventory: HardwareInventory = await bus.request(MACHINE_INVENTORY, MachineQuery(system_id=machine.system_id))
    assert inventory.cpu_count == GUEST_CPUS
    assert GUEST_MEMORY_MIB * 0.8 <= inventory.memory_mib <= GUEST_MEMORY_MIB  # less what the kernel keeps
    assert [(disk.name, disk.size_bytes) for disk in inventory.block_devices] == [("vda", GUEST_DISK_BYTES)]
    assert [interface.mac for interface in inventory.interfaces] == [mac]
    assert inventory.interfaces[0].link_up
    [neighbour] = inventory.lldp_neighbours
    assert (neighbour.interface, neighbour.chassis_id, neighbour.port_id, neighbour.system_name) == (
        inventory.interfaces[0].name,
        lldp_neighbour,
        tap,
        LAB_SWITCH,
    )
    logged = await eventually(
        partial(syslog_lines_of, rack.database_dsn, machine.system_id),
        lambda lines: any("powering off" in line for line in lines),
        timeout=10,
    )
    assert any("Linux version" in line for line in logged), "the kernel's boot lines (klogd) were not relayed"
    assert any("metalbus-ephemeral: running the user-data" in line for line in logged)
    events = await machine_events(rack.database_dsn, machine.system_id)
    fetched = {(event["protocol"], event["path"]) for event in events["boot"] if event["completed"]}
    assert {("http", f"{IMAGE_DIR}/vmlinuz"), ("http", f"{IMAGE_DIR}/initrd.img")} <= fetched, fetched
    assert "user-data" in {event["item"] for event in events["metadata"]}
    results = await bus.request(MACHINE_RESULTS, MachineQuery(system_id=machine.system_id))
    [result] = [result for result in results.results if result.name == "metalbus-inventory"]
    assert result.exit_status == 0
    assert HardwareInventory.model_validate_json(result.stdout).interfaces == inventory.interfaces


FAILING_SCRIPT = CommissioningScript(
    name="burn-in", content="#!/bin/sh\necho 'memory: 3 errors'\necho 'bad DIMM in slot 2' >&2\nexit 7\n"
)


@pytest.mark.usefixtures("router_advertisements", "lldp_neighbour")
async def test_a_qemu_machine_whose_chosen_script_fails_ends_failed_commissioning_with_the_output_stored(
    rack: Rack, link: Link, tap: str, tmp_path: Path
) -> None:
    bus, mac = rack.bus, guest_mac()
    await bus.request(SCRIPT_SET, FAILING_SCRIPT, timeout=5)
    created = MachineCreate(
        hostname="qemu-2", architecture=BIOS.architecture, boot_mac=mac, power_type=PowerType.MANUAL
    )
    machine = await bus.request(MACHINE_CREATE, created, timeout=10)
    commission = MachineActionRequest(
        system_id=machine.system_id, action=MachineAction.COMMISSION, scripts=[FAILING_SCRIPT.name]
    )
    assert (await bus.request(MACHINE_ACTION, commission, timeout=15)).status is MachineStatus.COMMISSIONING
    async with virtual_machine(link, tap, mac, BIOS, tmp_path) as qemu, asyncio.timeout(READY_TIMEOUT_S):
        final = await until_commissioning_ends(bus, machine.system_id, qemu)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(qemu.wait(), 15)
        powered_off = qemu.returncode == 0

    assert final.status is MachineStatus.FAILED_COMMISSIONING
    assert final.status_reason is not None and FAILING_SCRIPT.name in final.status_reason
    assert powered_off, "the commissioning environment did not power the VM off after the failure"
    results = await bus.request(MACHINE_RESULTS, MachineQuery(system_id=machine.system_id))
    by_name = {result.name: result for result in results.results}
    assert by_name["metalbus-inventory"].exit_status == 0
    failed = by_name[FAILING_SCRIPT.name]
    assert (failed.exit_status, failed.stdout, failed.stderr) == (7, "memory: 3 errors\n", "bad DIMM in slot 2\n")
