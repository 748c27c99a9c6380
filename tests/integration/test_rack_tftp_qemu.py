"""pxelinux in qemu fetches its config from rack-tftp and boots the kernel the region decided on.

The whole BIOS path of a rack, with real firmware and real loaders: qemu's iPXE ROM gets its address and the
``ipxe.cfg-${mac}`` URL from rack-dhcp (leases in a real region), fetches that script from our HTTP boot server,
and the script chains Debian's lpxelinux.0 over TFTP from our TFTP server (the iPXE → pxelinux chain of a MAAS
rack, whose BIOS machines get lpxelinux directly; a qemu NIC ROM always speaks iPXE first). lpxelinux asks our
TFTP server for ``pxelinux.cfg/01-<mac>``; the rack asks the real region (``BOOT_CONFIG``), which enlists the
unknown MAC and answers with the enlistment boot resource the test registered: the host's Debian kernel and a
tiny busybox initramfs whose ``/init`` writes a marker line and the kernel command line to the serial console,
then powers the guest off. The kernel and initrd come over TFTP or over HTTP, as the rendered config says.

Proof is observable only: the guest's serial log (the kernel booting, the marker, ``BOOTIF`` and the system id
the region gave), every file request our two servers answered and how many bytes of it were read, the region's
lease and its enlisted machine. The topology (namespace, veth, bridge, tap, router advertisements) is the one of
``test_rack_dhcp_qemu``.
"""

import asyncio
import contextlib
import gzip
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from metalbus.bus import Bus
from metalbus.contracts.boot import BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose, Machine, MachineListQuery, MachineStatus
from metalbus.subjects import BOOT_RESOURCE_SET, MACHINE_LIST
from metalbus_rack_dhcp.policy import RackView
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, open_interface_socket
from metalbus_rack_tftp.boot_config_cache import BootConfigCache
from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.dynamic_files import DynamicBootFiles
from metalbus_rack_tftp.http_boot import HttpBootServer, serve_http_boot
from metalbus_rack_tftp.region_boot_client import RegionBootConfigs
from metalbus_rack_tftp.sources import (
    FileRefused,
    FileSource,
    FirstThatServes,
    MemoryFile,
    OpenedFile,
    RefusalReason,
    Requester,
)
from metalbus_rack_tftp.tftp_server import TftpServer, serve_tftp
from tests.conftest import NatsServer
from tests.integration.test_rack_dhcp_clients import Link, Served, link, serve_subnet
from tests.integration.test_rack_dhcp_qemu import (
    QEMU,
    bound_in_region,
    guest,
    guest_mac,
    router_advertisements,
    tap,
)
from tests.integration.test_region import eventually, running_region

__all__ = ["link", "router_advertisements", "tap"]  # fixtures of the rack-dhcp qemu tests

REPOSITORY = Path(__file__).resolve().parents[2]
BOOT_FILES_SCRIPT = REPOSITORY / "scripts" / "boot-files.sh"
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))
BUSYBOX = Path("/bin/busybox")
KERNEL_PATH = "images/test/vmlinuz"
INITRD_PATH = "images/test/initrd.img"
KERNEL_PARAMS = "console=ttyS0 panic=-1"
BOOT_TIMEOUT_S = 100.0
POWER_OFF_TIMEOUT_S = 15.0
RACK_ID = "rack-1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(not KERNELS, reason="linux-image-amd64 is not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed (scripts/setup.sh installs it)"),
    pytest.mark.skipif(
        not Path("/usr/lib/PXELINUX/lpxelinux.0").exists(), reason="pxelinux is not installed (scripts/setup.sh)"
    ),
]


# --- The initramfs: busybox and an /init that reports and powers off ----------------------------------------------


def init_script(marker: str) -> bytes:
    return (
        "#!/bin/busybox sh\n"
        "/bin/busybox mount -t proc proc /proc\n"
        f'echo "{marker} $(/bin/busybox cat /proc/cmdline)" > /dev/console\n'
        "/bin/busybox poweroff -f\n"
    ).encode()


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes = b""
    device: tuple[int, int] = (0, 0)


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks as an initramfs (no cpio tool needed)."""
    archive = bytearray()
    for inode, entry in enumerate([*entries, CpioEntry("TRAILER!!!", 0)], start=1):
        name = entry.name.encode() + b"\0"
        fields = (inode, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, *entry.device, len(name), 0)
        archive += b"070701" + "".join(f"{value:08x}" for value in fields).encode() + name
        archive += bytes(-len(archive) % 4)
        archive += entry.data
        archive += bytes(-len(archive) % 4)
    return bytes(archive)


def build_initrd(marker: str) -> bytes:
    directory, character_device, executable = 0o040755, 0o020600, 0o100755
    entries = [
        CpioEntry("bin", directory),
        CpioEntry("dev", directory),
        CpioEntry("dev/console", character_device, device=(5, 1)),
        CpioEntry("proc", directory),
        CpioEntry("bin/busybox", executable, BUSYBOX.read_bytes()),
        CpioEntry("init", executable, init_script(marker)),
    ]
    return gzip.compress(newc_archive(entries), compresslevel=6)


@pytest.fixture
def marker() -> str:
    return f"metalbus-pxe-marker-{secrets.token_hex(4)}"


@pytest.fixture
def boot_root(tmp_path: Path, marker: str) -> Path:
    """A boot root filled by scripts/boot-files.sh, plus the test's kernel and initramfs under images/test/."""
    root = tmp_path / "boot"
    subprocess.run(["bash", str(BOOT_FILES_SCRIPT), str(root)], check=True, capture_output=True, timeout=60)
    (root / "images" / "test").mkdir(parents=True)
    shutil.copyfile(KERNELS[-1], root / KERNEL_PATH)
    (root / INITRD_PATH).write_bytes(build_initrd(marker))
    return root


# --- Our servers, with every request they answered recorded -----------------------------------------------------


@dataclass
class Fetch:
    """One file request answered by a source chain: by which protocol, the size served, how far it was read."""

    protocol: str
    path: str
    size: int | None = None
    """None: refused (``refusal`` says why)."""
    refusal: RefusalReason | None = None
    read_to: int = 0


@dataclass
class RecordedFile:
    opened: OpenedFile
    fetch: Fetch

    @property
    def size(self) -> int:
        return self.opened.size

    def read(self, offset: int, length: int) -> bytes:
        data = self.opened.read(offset, length)
        self.fetch.read_to = max(self.fetch.read_to, offset + len(data))
        return data

    def close(self) -> None:
        self.opened.close()


@dataclass
class RecordingSource:
    """A source chain whose every answer (file or refusal) lands in ``fetches``."""

    inner: FileSource
    fetches: list[Fetch]

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        fetch = Fetch(requester.protocol, path)
        self.fetches.append(fetch)
        try:
            opened = await self.inner.open(path, requester)
        except FileRefused as refusal:
            fetch.refusal = refusal.reason
            raise
        fetch.size = opened.size
        return RecordedFile(opened, fetch)


_IPXE_SCRIPT_NAME = re.compile(r"ipxe\.cfg-[0-9a-f]{2}(?::[0-9a-f]{2}){5}", re.IGNORECASE)


@dataclass
class ChainToPxelinux:
    """The iPXE script rack-dhcp's URL names, replaced by one that chains lpxelinux over TFTP from the rack.

    Option 210 (PXELINUX's path prefix) makes lpxelinux fetch its configs from the same TFTP server and port
    (set once the TFTP server listens).
    """

    tftp_port: int = 0

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        if not _IPXE_SCRIPT_NAME.fullmatch(path):
            raise FileRefused(RefusalReason.NOT_FOUND, f"not the iPXE script: {path}")
        prefix = f"tftp://{requester.local_address}:{self.tftp_port}/"
        return MemoryFile(f"#!ipxe\nset 210:string {prefix}\nchain {prefix}lpxelinux.0\n".encode())


@dataclass
class Rack:
    """The rack's three servers on the link's server address, and what they saw."""

    dhcp: Served
    tftp: TftpServer
    http: HttpBootServer
    kernels_over_http: bool
    address: str
    fetches: list[Fetch] = field(default_factory=list)

    @property
    def kernel_protocol(self) -> str:
        return "http" if self.kernels_over_http else "tftp"

    def location(self, path: str) -> str:
        """Where the rendered pxelinux config points for a file of the boot root."""
        return f"http://{self.address}:{self.http.port}/{path}" if self.kernels_over_http else path

    def served_in_order(self) -> list[tuple[str, str]]:
        """(protocol, path) of every file served, in the order first asked (a retransmitted request once)."""
        served = (fetch for fetch in self.fetches if fetch.size is not None)
        return list(dict.fromkeys((fetch.protocol, fetch.path.lstrip("/")) for fetch in served))


async def register_enlistment_resource(bus: Bus) -> None:
    resource = BootResource(
        architecture=Architecture.AMD64_BIOS,
        purpose=BootPurpose.ENLISTMENT,
        kernel=KERNEL_PATH,
        initrd=INITRD_PATH,
        kernel_params=KERNEL_PARAMS,
    )
    await eventually(lambda: bus.request(BOOT_RESOURCE_SET, resource, timeout=5), lambda stored: True, timeout=20)


@pytest.fixture(params=[False, True], ids=["kernel-over-tftp", "kernel-over-http"])
async def rack(
    request: pytest.FixtureRequest,
    nats_server: NatsServer,
    database_dsn: str,
    bus: Bus,
    link: Link,
    boot_root: Path,
) -> AsyncIterator[Rack]:
    """A region, and rack-dhcp, rack-tftp's TFTP server and its HTTP boot server on ``<prefix>.2``."""
    address = str(link.ip(2))
    fetches: list[Fetch] = []
    static = StaticBootRoot(boot_root)
    decisions = BootConfigCache(RegionBootConfigs(bus, rack_id=RACK_ID).boot_config)
    async with running_region(nats_server, database_dsn, "r1"), contextlib.AsyncExitStack() as stack:
        await serve_subnet(bus, link, 600)
        await register_enlistment_resource(bus)
        chain = ChainToPxelinux()
        dynamic = DynamicBootFiles(decisions, kernels_over_http=request.param)
        http = await serve_http_boot(address, 0, RecordingSource(FirstThatServes([chain, dynamic, static]), fetches))
        stack.push_async_callback(http.close)
        dynamic.http_port = http.port
        tftp = await serve_tftp(address, 0, RecordingSource(FirstThatServes([dynamic, static]), fetches))
        stack.callback(tftp.close)
        chain.tftp_port = tftp.port
        counters = ServerCounters()
        view = RackView(rack_id=RACK_ID, link_address=link.ip(2), http_port=http.port)
        dhcp = DhcpProtocol(link.server_interface, view, RegionLeaseSource(bus), counters=counters)
        stack.push_async_callback(dhcp.close)
        sock = open_interface_socket(link.server_interface)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: dhcp, sock=sock)
        yield Rack(Served(bus, dhcp, counters), tftp, http, request.param, address, fetches)


# --- The boot ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Boot:
    serial: str
    marker_line: str
    seconds_to_marker: float
    exit_code: int | None


async def boot_until_marker(link: Link, tap: str, mac: str, console: Path, marker: str) -> Boot:
    """Start the guest, wait for the marker on its serial port, then for it to power itself off."""
    firmware = ["-machine", "pc", "-no-reboot"]
    async with asyncio.timeout(BOOT_TIMEOUT_S), guest(link, tap, mac, firmware, console) as qemu:
        started = time.monotonic()
        while (line := marker_line(console, marker)) is None:
            assert qemu.returncode is None, f"qemu exited with {qemu.returncode} before the marker"
            await asyncio.sleep(0.2)
        seconds = time.monotonic() - started
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(qemu.wait(), POWER_OFF_TIMEOUT_S)
        return Boot(serial_text(console), line, seconds, qemu.returncode)


def serial_text(console: Path) -> str:
    return console.read_text(errors="replace") if console.exists() else ""


def marker_line(console: Path, marker: str) -> str | None:
    """The line the guest's /init wrote, once it is complete (its newline written)."""
    text = serial_text(console)
    start = text.find(marker)
    end = text.find("\n", start)
    return None if start < 0 or end < 0 else text[start:end].strip()


async def enlisted_machine(bus: Bus, mac: str) -> Machine:
    machines = await bus.request(MACHINE_LIST, MachineListQuery(), timeout=5)
    [machine] = [machine for machine in machines.machines if machine.boot_mac == mac]
    return machine


@pytest.mark.usefixtures("router_advertisements")
async def test_pxelinux_fetches_its_config_from_rack_tftp_and_boots_the_kernel_the_region_chose(
    rack: Rack, link: Link, tap: str, marker: str, tmp_path: Path
) -> None:
    mac = guest_mac()
    dashes = mac.replace(":", "-")

    boot = await boot_until_marker(link, tap, mac, tmp_path / "guest.serial", marker)

    print(f"qemu start to marker: {boot.seconds_to_marker:.1f} s (kernel over {rack.kernel_protocol})")
    assert "Linux version" in boot.serial
    assert boot.exit_code == 0, "the guest did not power itself off after /init"
    await bound_in_region(rack.dhcp, link, mac)
    machine = await enlisted_machine(rack.dhcp.bus, mac)
    assert (machine.status, machine.architecture) == (MachineStatus.NEW, Architecture.AMD64_BIOS)
    assert set(boot.marker_line.removeprefix(marker).split()) >= {
        f"BOOT_IMAGE={rack.location(KERNEL_PATH)}",
        f"initrd={rack.location(INITRD_PATH)}",
        "console=ttyS0",
        f"BOOTIF=01-{dashes}",
        "metalbus.purpose=enlistment",
        f"metalbus.system_id={machine.system_id}",
    }
    assert rack.served_in_order() == [
        ("http", f"ipxe.cfg-{mac}"),
        ("tftp", "lpxelinux.0"),
        ("tftp", "ldlinux.c32"),
        ("tftp", f"pxelinux.cfg/01-{dashes}"),
        (rack.kernel_protocol, KERNEL_PATH),
        (rack.kernel_protocol, INITRD_PATH),
    ]
    assert all(fetch.read_to == fetch.size for fetch in rack.fetches), rack.fetches
    assert rack.tftp.counters.transfers_completed == len([f for f in rack.fetches if f.protocol == "tftp"])
    assert not rack.tftp.counters.transfers_failed and not rack.tftp.counters.refused
