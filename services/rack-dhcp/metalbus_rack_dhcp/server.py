"""The DHCP server's UDP loop: one socket per served interface, each datagram decoded, decided and answered.

Bytes move between the socket and ``policy.decide`` through ``codec``; this module owns only transport matters:
sockets, where a reply goes (RFC 2131 §4.1, ``reply_destination``), the bound on requests in flight, counters.

A reply to a client that has no address yet (no giaddr, no ciaddr, no broadcast flag) is unicast to yiaddr at
chaddr. The kernel cannot ARP for an address nobody holds yet, so before sending the server installs a neighbour
entry (``ip neigh replace <yiaddr> lladdr <chaddr> dev <if> nud stale``); when that fails (not root, no
``ip``), the reply is broadcast instead, which every client accepts.
"""

import asyncio
import contextlib
import json
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

import structlog

from metalbus_rack_dhcp.codec import DhcpDecodeError, DhcpEncodeError, decode_message, encode_message, reply_size_limit
from metalbus_rack_dhcp.messages import UNSPECIFIED, DhcpMessage, MessageType
from metalbus_rack_dhcp.policy import LeaseSource, RackView, Silence, decide

log = structlog.get_logger("metalbus.rack_dhcp")

SERVER_PORT = 67
CLIENT_PORT = 68
BROADCAST = IPv4Address("255.255.255.255")
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
COMMAND_TIMEOUT_S = 2.0
RECEIVE_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class Destination:
    """Where one reply goes; ``needs_neighbour`` when it is unicast to an address nobody has ARPed yet."""

    address: IPv4Address
    port: int
    needs_neighbour: bool = False


def reply_destination(request: DhcpMessage, reply: DhcpMessage, client_port: int = CLIENT_PORT) -> Destination:
    """RFC 2131 §4.1: relay first, NAKs broadcast, then ciaddr, the broadcast flag, else unicast to yiaddr."""
    if request.giaddr != UNSPECIFIED:
        return Destination(request.giaddr, SERVER_PORT)
    if reply.message_type is MessageType.NAK:
        return Destination(BROADCAST, client_port)
    if request.ciaddr != UNSPECIFIED:
        return Destination(request.ciaddr, client_port)
    if request.broadcast or reply.yiaddr == UNSPECIFIED:
        return Destination(BROADCAST, client_port)
    return Destination(reply.yiaddr, client_port, needs_neighbour=True)


@dataclass
class ServerCounters:
    """What the server saw: requests by message type, replies by type, drops and silences by reason."""

    received: Counter[str] = field(default_factory=Counter)
    replied: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    silent: Counter[str] = field(default_factory=Counter)
    neighbour_fallbacks: int = 0


NeighbourSetter = Callable[[str, IPv4Address, bytes], Awaitable[bool]]


async def set_neighbour(interface: str, address: IPv4Address, mac: bytes) -> bool:
    """``ip neigh replace``: lets the kernel unicast to an address that cannot answer ARP yet. False on failure."""
    lladdr = ":".join(f"{octet:02x}" for octet in mac)
    command = ["ip", "neigh", "replace", str(address), "lladdr", lladdr, "dev", interface, "nud", "stale"]
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
    except OSError:
        return False
    try:
        return await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_S) == 0
    except TimeoutError:
        process.kill()
        await process.wait()
        return False


async def interface_address(interface: str) -> IPv4Address:
    """The first IPv4 address of ``interface`` (``ip -j -4 addr show dev``); OSError when it has none."""
    process = await asyncio.create_subprocess_exec(
        "ip", "-j", "-4", "addr", "show", "dev", interface, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_S)
    for link in json.loads(stdout or b"[]") if process.returncode == 0 else []:
        for address in link.get("addr_info", []):
            if address.get("family") == "inet":
                return IPv4Address(address["local"])
    raise OSError(f"interface {interface} has no IPv4 address")


def open_interface_socket(interface: str, port: int = SERVER_PORT) -> socket.socket:
    """A UDP socket on 0.0.0.0:``port`` that only sees ``interface`` and may broadcast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, interface.encode())
        sock.bind(("0.0.0.0", port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class DhcpProtocol(asyncio.DatagramProtocol):
    """One served interface: every datagram becomes a task (at most ``max_in_flight``) that answers it."""

    def __init__(
        self,
        interface: str,
        rack: RackView,
        leases: LeaseSource,
        *,
        counters: ServerCounters | None = None,
        max_in_flight: int = 256,
        client_port: int = CLIENT_PORT,
        neighbour_setter: NeighbourSetter | None = set_neighbour,
    ) -> None:
        self.interface = interface
        self.rack = rack
        self.leases = leases
        self.counters = counters if counters is not None else ServerCounters()
        self.max_in_flight = max_in_flight
        self.client_port = client_port
        self.neighbour_setter = neighbour_setter
        self.transport: asyncio.DatagramTransport | None = None
        self.in_flight: set[asyncio.Task[None]] = set()
        self._logged_unexpected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector loop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        try:
            request = decode_message(data)
        except DhcpDecodeError as error:
            self.counters.dropped[f"decode: {error.reason}"] += 1
            log.debug("dhcp.dropped", interface=self.interface, source=str(addr[0]), reason=error.reason)
            return
        except Exception as error:  # noqa: BLE001 — a codec bug must not reach the loop: counted, logged once
            self._count_unexpected(error)
            return
        if len(self.in_flight) >= self.max_in_flight:
            self.counters.dropped["overloaded"] += 1
            return
        kind = request.message_type
        self.counters.received[kind.name if kind is not None else "UNKNOWN"] += 1
        task = asyncio.get_running_loop().create_task(self.handle(request))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    def error_received(self, exc: Exception) -> None:
        self.counters.dropped["socket_error"] += 1
        log.debug("dhcp.socket_error", interface=self.interface, error=repr(exc))

    async def handle(self, request: DhcpMessage) -> None:
        """Decide and send; nothing raised here escapes (an unexpected error is counted and logged once)."""
        try:
            decision = await decide(request, self.rack, self.leases)
            if isinstance(decision, Silence):
                self.counters.silent[decision.reason.value] += 1
                log.debug("dhcp.silent", interface=self.interface, reason=decision.reason.value, detail=decision.detail)
                return
            await self.send(request, decision)
        except asyncio.CancelledError:
            raise
        except DhcpEncodeError as error:
            self.counters.dropped["encode_error"] += 1
            log.debug("dhcp.unencodable", interface=self.interface, error=str(error))
        except Exception as error:  # noqa: BLE001 — the loop must outlive any bug: counted, logged once
            self._count_unexpected(error)

    def _count_unexpected(self, error: Exception) -> None:
        self.counters.dropped["unexpected_error"] += 1
        if not self._logged_unexpected:
            self._logged_unexpected = True
            log.error("dhcp.unexpected_error", interface=self.interface, error=repr(error), exc_info=error)

    async def send(self, request: DhcpMessage, reply: DhcpMessage) -> None:
        payload = encode_message(reply, max_size=reply_size_limit(request))
        destination = reply_destination(request, reply, self.client_port)
        if destination.needs_neighbour and not await self._neighbour_for(reply):
            self.counters.neighbour_fallbacks += 1
            destination = Destination(BROADCAST, self.client_port)
        if self.transport is None or self.transport.is_closing():
            self.counters.dropped["transport_closed"] += 1
            return
        self.transport.sendto(payload, (str(destination.address), destination.port))
        kind = reply.message_type
        self.counters.replied[kind.name if kind is not None else "UNKNOWN"] += 1

    async def _neighbour_for(self, reply: DhcpMessage) -> bool:
        if self.neighbour_setter is None:
            return False
        return await self.neighbour_setter(self.interface, reply.yiaddr, reply.mac)

    async def close(self) -> None:
        """Stop receiving and cancel the requests still in flight."""
        if self.transport is not None:
            self.transport.close()
        for task in list(self.in_flight):
            task.cancel()
        for task in list(self.in_flight):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve_interface(
    interface: str,
    rack_id: str,
    leases: LeaseSource,
    *,
    port: int = SERVER_PORT,
    address: IPv4Address | None = None,
    counters: ServerCounters | None = None,
    max_in_flight: int = 256,
) -> DhcpProtocol:
    """Open ``interface``'s socket and start answering; the caller closes the returned protocol."""
    link_address = address if address is not None else await interface_address(interface)
    rack = RackView(rack_id=rack_id, link_address=link_address)
    protocol = DhcpProtocol(interface, rack, leases, counters=counters, max_in_flight=max_in_flight)
    sock = open_interface_socket(interface, port)
    await asyncio.get_running_loop().create_datagram_endpoint(lambda: protocol, sock=sock)
    log.info("dhcp.serving", interface=interface, address=str(link_address), port=port)
    return protocol
