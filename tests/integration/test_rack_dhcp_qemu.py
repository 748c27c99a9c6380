"""Real PXE firmware against rack-dhcp: iPXE in qemu (BIOS and UEFI), and scapy-crafted option-93 requests.

The topology is the one of ``test_rack_dhcp_clients``: the server on the root-namespace end of a veth pair
(``<prefix>.2``), the client end in a namespace made for the test. For qemu, a bridge in that namespace joins the
veth's end and a tap device that the guest's NIC is plugged into. The proof that iPXE understood our OFFER and
ACK is what it does next: it fetches the boot file URL we gave it from a small HTTP listener of the test, on the
rack's address. Every DHCP packet crossing the server's veth is captured (AF_PACKET) and decoded with our codec.
"""

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import unquote

import pytest

from metalbus.bus import Bus
from metalbus.contracts.leases import LeaseState
from metalbus_rack_dhcp.codec import DhcpDecodeError, decode_client_architectures, decode_message, is_ipxe_request
from metalbus_rack_dhcp.messages import DhcpMessage, MessageType, Option
from metalbus_rack_dhcp.policy import RackView
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, open_interface_socket
from tests.conftest import NatsServer
from tests.integration.test_rack_dhcp_clients import (
    Link,
    Served,
    in_namespace,
    leases_of,
    link,
    run_sync,
    serve_subnet,
    served,
)
from tests.integration.test_region import running_region

__all__ = ["link", "served"]  # fixtures imported from the dhclient/udhcpc tests

QEMU = shutil.which("qemu-system-x86_64")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
PROBE = Path(__file__).with_name("dhcp_probe_scapy.py")
BOOT_TIMEOUT_S = 80.0
IPXE_SCRIPT = b"#!ipxe\necho metalbus-ok\nsleep 30\n"
ETH_P_ALL = 0x0003  # ETH_P_IP would miss the frames the host sends
ETHERTYPE_IPV4 = b"\x08\x00"
ETHERNET_HEADER = 14
UDP_HEADER = 8

ROUTER_ADVERTISEMENT = bytes([134, 0, 0, 0, 64, 0, 0, 0]) + bytes(8)
"""ICMPv6 type 134, hop limit 64, no M/O flag, router lifetime 0, no options (the kernel fills the checksum)."""
ALL_NODES = "ff02::1"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed (scripts/setup.sh installs it)"),
]
needs_ovmf = pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf is not installed (scripts/setup.sh installs it)")


def guest_mac() -> str:
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))


@pytest.fixture
def tap(link: Link) -> str:
    """A tap device in the link's namespace, bridged with the veth's namespace end (removed with the namespace)."""
    suffix = link.namespace.removeprefix("mbn")
    bridge, tap_device = f"mbb{suffix}", f"mbt{suffix}"
    namespaced = ("ip", "-n", link.namespace)
    run_sync(*namespaced, "link", "add", bridge, "type", "bridge", "forward_delay", "0", "stp_state", "0")
    run_sync(*namespaced, "tuntap", "add", "dev", tap_device, "mode", "tap")
    for port in (link.client_interface, tap_device):
        run_sync(*namespaced, "link", "set", port, "master", bridge)
    for device in (tap_device, bridge):
        run_sync(*namespaced, "link", "set", device, "up")
    return tap_device


@pytest.fixture
async def router_advertisements(link: Link) -> AsyncIterator[None]:
    """One RA a second on the link: iPXE otherwise waits ~13 s for IPv6 autoconfiguration before booting.

    An RA without the M and O flags tells iPXE there is nothing more to configure; with router lifetime 0 and no
    prefix it changes nothing else (the boot URL is IPv4). Sends fail harmlessly until the veth's link-local
    address has passed duplicate address detection.
    """
    index = socket.if_nametoindex(link.server_interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    sock.setblocking(False)

    async def advertise() -> None:
        while True:
            with contextlib.suppress(OSError):
                sock.sendto(ROUTER_ADVERTISEMENT, (ALL_NODES, 0, 0, index))
            await asyncio.sleep(1.0)

    sender = asyncio.create_task(advertise())
    try:
        yield
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        sock.close()


@dataclass
class BootFileServer:
    """The rack's HTTP side as far as iPXE is concerned: records each request line's path, answers a script."""

    paths: list[str] = field(default_factory=list)

    async def answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)).strip():
                pass  # headers
            self.paths.append(request_line.decode("latin-1").split()[1])
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(IPXE_SCRIPT)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + IPXE_SCRIPT)
            await writer.drain()
        except (TimeoutError, OSError, IndexError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def boot_files(link: Link) -> AsyncIterator[tuple[BootFileServer, int]]:
    recorder = BootFileServer()
    server = await asyncio.start_server(recorder.answer, str(link.ip(2)), 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield recorder, port
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def rack(
    nats_server: NatsServer, database_dsn: str, bus: Bus, link: Link, boot_files: tuple[BootFileServer, int]
) -> AsyncIterator[Served]:
    """rack-dhcp on the server end, its iPXE URLs pointing at the test's HTTP listener (a free port)."""
    _, http_port = boot_files
    async with running_region(nats_server, database_dsn, "r1"):
        await serve_subnet(bus, link, 600)
        counters = ServerCounters()
        view = RackView(rack_id="rack-1", link_address=link.ip(2), http_port=http_port)
        server = DhcpProtocol(link.server_interface, view, RegionLeaseSource(bus), counters=counters)
        sock = open_interface_socket(link.server_interface)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, sock=sock)
        try:
            yield Served(bus, server, counters)
        finally:
            await server.close()


@dataclass
class DhcpCapture:
    """DHCP requests (to port 67) and replies (from port 67) seen on one interface, decoded with our codec."""

    requests: list[DhcpMessage] = field(default_factory=list)
    replies: list[DhcpMessage] = field(default_factory=list)
    reply_destinations: list[IPv4Address] = field(default_factory=list)
    undecodable: list[bytes] = field(default_factory=list)

    def take(self, frame: bytes) -> None:
        if len(frame) < ETHERNET_HEADER + 20 or frame[12:14] != ETHERTYPE_IPV4:
            return
        if frame[ETHERNET_HEADER + 9] != socket.IPPROTO_UDP:
            return
        udp = ETHERNET_HEADER + (frame[ETHERNET_HEADER] & 0x0F) * 4
        source_port = int.from_bytes(frame[udp : udp + 2], "big")
        destination_port = int.from_bytes(frame[udp + 2 : udp + 4], "big")
        if 67 not in (source_port, destination_port):
            return
        payload = frame[udp + UDP_HEADER :]
        try:
            message = decode_message(payload)
        except DhcpDecodeError:
            self.undecodable.append(payload)
            return
        if destination_port == 67:
            self.requests.append(message)
        else:
            self.replies.append(message)
            self.reply_destinations.append(IPv4Address(frame[ETHERNET_HEADER + 16 : ETHERNET_HEADER + 20]))


@pytest.fixture
async def capture(link: Link) -> AsyncIterator[DhcpCapture]:
    captured = DhcpCapture()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((link.server_interface, 0))
    sock.setblocking(False)

    async def receive() -> None:
        loop = asyncio.get_running_loop()
        while True:
            captured.take(await loop.sock_recv(sock, 65535))

    reader = asyncio.create_task(receive())
    try:
        yield captured
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        sock.close()


@contextlib.asynccontextmanager
async def guest(
    link: Link, tap: str, mac: str, firmware: list[str], console: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A qemu guest booting from its NIC (TCG, no display, serial to ``console``); killed by PID on the way out."""
    assert QEMU is not None
    argv = [
        *("ip", "netns", "exec", link.namespace, QEMU, "-accel", "tcg", "-nodefaults", "-display", "none"),
        *("-m", "256", "-serial", f"file:{console}", *firmware),
        *("-netdev", f"tap,id=net0,ifname={tap},script=no,downscript=no"),
        *("-device", f"virtio-net-pci,netdev=net0,mac={mac}", "-boot", "n"),
    ]
    output = console.with_suffix(".qemu.log").open("wb")
    process = await asyncio.create_subprocess_exec(*argv, stdout=output, stderr=asyncio.subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 10)
        output.close()
        for log in (console, console.with_suffix(".qemu.log")):
            if log.exists():
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


async def first_fetch(boot_files: BootFileServer, qemu: asyncio.subprocess.Process) -> str:
    """The first path the guest asked the HTTP listener for; fails if qemu exits first."""
    while not boot_files.paths:
        assert qemu.returncode is None, f"qemu exited with {qemu.returncode} before any HTTP request"
        await asyncio.sleep(0.2)
    return boot_files.paths[0]


async def boot_until_fetch(
    link: Link, tap: str, mac: str, firmware: list[str], console: Path, boot_files: BootFileServer
) -> str:
    async with asyncio.timeout(BOOT_TIMEOUT_S), guest(link, tap, mac, firmware, console) as qemu:
        return await first_fetch(boot_files, qemu)


def architecture_of(message: DhcpMessage) -> tuple[int, ...]:
    return decode_client_architectures(message.option(Option.CLIENT_ARCHITECTURE) or b"")


async def bound_in_region(served: Served, link: Link, mac: str) -> IPv4Address:
    [lease] = await leases_of(served.bus, mac)
    assert lease.state is LeaseState.BOUND
    assert link.ip(100) <= lease.ip <= link.ip(120)
    return lease.ip


def assert_answered_dora(served: Served, capture: DhcpCapture, mac: str, address: IPv4Address) -> None:
    """Every DISCOVER offered, every REQUEST acknowledged, nothing dropped; only the guest spoke DHCP.

    iPXE does not set the broadcast flag, so every reply went unicast to the leased address at the guest's MAC
    (the server's neighbour entry path, without falling back to broadcast).
    """
    assert served.counters.received["DISCOVER"] == 1  # option 175 no-pxedhcp: iPXE waits for no ProxyDHCP offer
    assert served.counters.received["REQUEST"] >= 1
    assert served.counters.replied["OFFER"] == served.counters.received["DISCOVER"]
    assert served.counters.replied["ACK"] == served.counters.received["REQUEST"]
    assert not served.counters.dropped and not capture.undecodable
    assert {message.mac.hex(":") for message in capture.requests} == {mac}
    assert not any(message.broadcast for message in capture.requests)
    assert set(capture.reply_destinations) == {address}
    assert served.counters.neighbour_fallbacks == 0


def assert_replies_carry_the_ipxe_template(capture: DhcpCapture, link: Link, http_port: int) -> None:
    """On the wire, OFFER and ACK name the rack as next server and the un-expanded ``${mac}`` script URL."""
    rack_address = link.ip(2)
    template = f"http://{rack_address}:{http_port}/ipxe.cfg-${{mac}}".encode()
    kinds = {reply.message_type for reply in capture.replies}
    assert kinds == {MessageType.OFFER, MessageType.ACK}
    for reply in capture.replies:
        assert (reply.siaddr, reply.file, reply.option(Option.BOOTFILE_NAME)) == (rack_address, template, template)
        assert reply.option(Option.IPXE_ENCAPSULATED) == bytes((176, 1, 1))  # no-pxedhcp


def assert_every_request_is_ipxe_of_architecture(capture: DhcpCapture, architectures: set[tuple[int, ...]]) -> None:
    assert capture.requests
    assert all(is_ipxe_request(message) for message in capture.requests)
    assert {architecture_of(message) for message in capture.requests} <= architectures


@pytest.mark.usefixtures("router_advertisements")
async def test_bios_ipxe_fetches_the_per_mac_script_url_that_rack_dhcp_offered(
    rack: Served,
    link: Link,
    tap: str,
    boot_files: tuple[BootFileServer, int],
    capture: DhcpCapture,
    tmp_path: Path,
) -> None:
    mac = guest_mac()

    path = await boot_until_fetch(link, tap, mac, ["-machine", "pc"], tmp_path / "bios.serial", boot_files[0])

    assert unquote(path) == f"/ipxe.cfg-{mac}"
    address = await bound_in_region(rack, link, mac)
    assert_answered_dora(rack, capture, mac, address)
    assert_replies_carry_the_ipxe_template(capture, link, boot_files[1])
    assert_every_request_is_ipxe_of_architecture(capture, {(0,)})  # option 93: x86 BIOS


@needs_ovmf
@pytest.mark.usefixtures("router_advertisements")
async def test_uefi_ipxe_sends_option_93_efi_and_fetches_the_per_mac_script_url(
    rack: Served,
    link: Link,
    tap: str,
    boot_files: tuple[BootFileServer, int],
    capture: DhcpCapture,
    tmp_path: Path,
) -> None:
    mac = guest_mac()
    variables = tmp_path / "OVMF_VARS_4M.fd"
    shutil.copyfile(OVMF_VARS, variables)
    firmware = [
        *("-machine", "q35"),
        *("-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        *("-drive", f"if=pflash,format=raw,unit=1,file={variables}"),
    ]

    path = await boot_until_fetch(link, tap, mac, firmware, tmp_path / "uefi.serial", boot_files[0])

    assert unquote(path) == f"/ipxe.cfg-{mac}"
    address = await bound_in_region(rack, link, mac)
    assert_answered_dora(rack, capture, mac, address)
    assert_replies_carry_the_ipxe_template(capture, link, boot_files[1])
    assert_every_request_is_ipxe_of_architecture(capture, {(7,)})  # option 93: x86-64 EFI (RFC 4578)


@dataclass(frozen=True)
class ProbeCase:
    architecture: int
    vendor_class: str
    boot_file: str
    """``{rack}`` stands for the rack's address."""
    tftp: bool


PROBE_CASES = {
    "x86-64 EFI gets the signed EFI loader over TFTP": ProbeCase(
        7, "PXEClient:Arch:00007:UNDI:003016", "bootx64.efi", tftp=True
    ),
    "x86 BIOS gets lpxelinux": ProbeCase(0, "PXEClient:Arch:00000:UNDI:002001", "lpxelinux.0", tftp=True),
    "arm64 EFI gets grub arm64": ProbeCase(11, "PXEClient:Arch:00011:UNDI:003016", "grubaa64.efi", tftp=True),
    "x86-64 UEFI HTTP boot gets a URL and option 60": ProbeCase(
        16, "HTTPClient:Arch:00016:UNDI:003001", "http://{rack}:5248/images/bootx64.efi", tftp=False
    ),
}


async def probe(link: Link, mac: str, case: ProbeCase) -> dict[str, object]:
    argv = [sys.executable, str(PROBE), link.client_interface, mac, "--arch", str(case.architecture)]
    status, output = await in_namespace(link, *argv, "--vendor-class", case.vendor_class, timeout=30)
    assert status == 0, output
    offer = json.loads(output.strip().splitlines()[-1])["offer"]
    assert offer is not None, "no OFFER within the probe's timeout"
    return dict(offer)


@pytest.mark.parametrize("case", PROBE_CASES.values(), ids=PROBE_CASES.keys())
async def test_a_pxe_discover_crafted_by_scapy_is_offered_the_boot_file_of_its_architecture(
    served: Served, link: Link, case: ProbeCase
) -> None:
    mac = guest_mac()
    rack_address = str(link.ip(2))

    offer = await probe(link, mac, case)

    options = offer["options"]
    assert isinstance(options, dict)
    assert options["message-type"] == MessageType.OFFER
    assert offer["chaddr"] == mac
    assert IPv4Address(str(offer["yiaddr"])) in {link.ip(n) for n in range(100, 121)}
    assert offer["siaddr"] == options["server_id"] == rack_address
    assert offer["file"] == options["boot-file-name"] == case.boot_file.format(rack=rack_address)
    if case.tftp:
        assert options["tftp_server_name"] == rack_address
        assert "vendor_class_id" not in options
    else:
        assert options["vendor_class_id"] == "HTTPClient"
        assert "tftp_server_name" not in options
    assert served.counters.replied == {"OFFER": 1}
