"""The DHCP server's UDP loop: one socket per served interface, each datagram decoded, decided and answered.

Bytes move between the socket and ``policy.decide`` through ``codec``; this module owns only transport matters:
sockets, where a reply goes (RFC 2131 §4.1, ``reply_destination``), the bound on requests in flight, counters.

A request that has waited longer than ``max_wait_s`` since it reached the host (the kernel's arrival stamp, see
``interface_socket``) is dropped unanswered, counted as ``stale``: its client has given up on it or sent it
again, and under overload answering the old copies first is what lets every answer come too late. It is checked
as the datagram is read, when its turn to be decided comes, and while it is queued for a batch to the region
(``request_batcher.answer_by``); once sent to the region it is answered.

A reply to a client that has no address yet (no giaddr, no ciaddr, no broadcast flag) is unicast to yiaddr at
chaddr. The kernel cannot ARP for an address nobody holds yet, so before sending the server installs a neighbour
entry (``ip neigh replace <yiaddr> lladdr <chaddr> dev <if> nud stale``); when that fails (not root, no
``ip``), the reply is broadcast instead, which every client accepts.

Every lease event (OFFER, ACK, NAK sent; RELEASE, DECLINE accepted by the region) is one ``dhcp.lease`` info line
whose fields are ``lease_fields``: type, mac, ip, subnet, rack, xid, interface and source (region, or cache when
the rack's cache answered a renewal while the region was away).
"""

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

import structlog

from metalbus_rack_dhcp.codec import DhcpDecodeError, DhcpEncodeError, decode_message, encode_message, reply_size_limit
from metalbus_rack_dhcp.interface_socket import InterfaceSocket
from metalbus_rack_dhcp.lease_cache import answered_from_cache
from metalbus_rack_dhcp.messages import UNSPECIFIED, DhcpMessage, MessageType, Option
from metalbus_rack_dhcp.policy import HTTP_PORT, LeaseSource, RackView, Silence, SilenceReason, decide, mac_text
from metalbus_rack_dhcp.request_batcher import StaleRequest, answer_by

log = structlog.get_logger("metalbus.rack_dhcp")

SERVER_PORT = 67
CLIENT_PORT = 68
BROADCAST = IPv4Address("255.255.255.255")
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
COMMAND_TIMEOUT_S = 2.0
RECEIVE_BUFFER_BYTES = 1 << 20
DEFAULT_MAX_WAIT_S = 1.0
"""The shortest wait of the clients we know before they send again (iPXE and perfdhcp: 1 s; RFC 2131 clients
and PXE ROMs: 4 s). Half of it (0.5 s) shed more and completed fewer exchanges under perfdhcp past saturation."""


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


@functools.lru_cache(maxsize=4096)
def _dotted_of(address: int) -> str:
    return str(IPv4Address(address))


def dotted(address: IPv4Address) -> str:
    """``str(address)``, remembered: replies go to the same relays and clients over and over, and IPv4Address
    formats itself anew every time."""
    return _dotted_of(int(address))


DECODE_DROP_PREFIX = "decode: "
OVERLOADED = "overloaded"
SOCKET_ERROR = "socket_error"
ENCODE_ERROR = "encode_error"
UNEXPECTED_ERROR = "unexpected_error"
TRANSPORT_CLOSED = "transport_closed"
STALE = "stale"
DROP_REASONS = (OVERLOADED, STALE, SOCKET_ERROR, ENCODE_ERROR, UNEXPECTED_ERROR, TRANSPORT_CLOSED)
"""Why a datagram gets no answer besides a decode error (counted as ``DECODE_DROP_PREFIX`` + its reason)."""


def decode_drop(error: DhcpDecodeError) -> str:
    """The drop counter's key of an undecodable datagram: the typed error's stable reason, never its text."""
    return DECODE_DROP_PREFIX + error.reason


@dataclass
class ServerCounters:
    """What the server saw: requests by message type, replies by type, drops and silences by reason.

    The one record of these counts: the Prometheus collector of ``metrics.py`` reads it at scrape time."""

    received: Counter[str] = field(default_factory=Counter)
    replied: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    silent: Counter[str] = field(default_factory=Counter)
    neighbour_fallbacks: int = 0


NeighbourSetter = Callable[[str, IPv4Address, bytes], Awaitable[bool]]


SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1


def arp_entry_request(interface: str, address: IPv4Address, mac: bytes) -> bytes:
    """A ``struct arpreq`` (netinet/if_arp.h): protocol address (sockaddr_in), hardware address (sockaddr,
    ARPHRD_ETHER), flags (ATF_COM: the MAC is known), netmask (unused), device name."""
    protocol = struct.pack("=H2s4s8x", socket.AF_INET, b"\0\0", address.packed)
    hardware = struct.pack("=H6s8x", ARPHRD_ETHER, mac)
    return protocol + hardware + struct.pack("=i", ATF_COM) + bytes(16) + interface.encode()[:15].ljust(16, b"\0")


async def set_neighbour(interface: str, address: IPv4Address, mac: bytes) -> bool:
    """Give the kernel the client's MAC for ``address`` (SIOCSARP, what ``ip neigh replace … nud reachable``
    does, one system call instead of a process per reply), so it can unicast to an address that cannot answer
    ARP yet. Needs CAP_NET_ADMIN; False on failure (the caller broadcasts instead)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCSARP, arp_entry_request(interface, address, mac))
    except OSError as error:
        log.debug("dhcp.neighbour_failed", interface=interface, address=str(address), error=repr(error))
        return False
    return True


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
    """One served interface: every datagram becomes a task (at most ``max_in_flight``) that answers it, unless it
    has waited more than ``max_wait_s`` (0: no limit) on ``clock`` since ``received_at``."""

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
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interface = interface
        self.rack = rack
        self.leases = leases
        self.counters = counters if counters is not None else ServerCounters()
        self.max_in_flight = max_in_flight
        self.client_port = client_port
        self.neighbour_setter = neighbour_setter
        self.max_wait_s = max_wait_s
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        self.in_flight: set[asyncio.Task[None]] = set()
        self._logged_unexpected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # the selector loop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str | int, int], received_at: float | None = None) -> None:
        """``received_at``: when the datagram reached the host, on ``clock``; None: now."""
        if received_at is None:
            received_at = self.clock()
        elif self._stale(received_at):
            return
        try:
            request = decode_message(data)
        except DhcpDecodeError as error:
            self.counters.dropped[decode_drop(error)] += 1
            log.debug("dhcp.dropped", interface=self.interface, source=str(addr[0]), reason=error.reason)
            return
        except Exception as error:  # noqa: BLE001 — a codec bug must not reach the loop: counted, logged once
            self._count_unexpected(error)
            return
        if len(self.in_flight) >= self.max_in_flight:
            self.counters.dropped[OVERLOADED] += 1
            return
        kind = request.message_type
        self.counters.received[kind.name if kind is not None else "UNKNOWN"] += 1
        task = asyncio.get_running_loop().create_task(self.handle(request, received_at))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    def error_received(self, exc: Exception) -> None:
        self.counters.dropped[SOCKET_ERROR] += 1
        log.debug("dhcp.socket_error", interface=self.interface, error=repr(exc))

    def _stale(self, received_at: float) -> bool:
        if self.max_wait_s and self.clock() - received_at > self.max_wait_s:
            self.counters.dropped[STALE] += 1
            return True
        return False

    async def handle(self, request: DhcpMessage, received_at: float | None = None) -> None:
        """Decide and send; nothing raised here escapes (an unexpected error is counted and logged once).
        A request that waited too long for its turn (``received_at``) is dropped as stale instead."""
        if received_at is not None and self._stale(received_at):
            return
        if received_at is not None and self.max_wait_s:
            answer_by(received_at + self.max_wait_s)
        try:
            decision = await decide(request, self.rack, self.leases)
            if isinstance(decision, Silence):
                self.counters.silent[decision.reason.value] += 1
                log.debug("dhcp.silent", interface=self.interface, reason=decision.reason.value, detail=decision.detail)
                if decision.reason is SilenceReason.NO_REPLY_EXPECTED:
                    self._log_lease(request, None)
                return
            await self.send(request, decision)
        except asyncio.CancelledError:
            raise
        except StaleRequest:
            self.counters.dropped[STALE] += 1
        except DhcpEncodeError as error:
            self.counters.dropped[ENCODE_ERROR] += 1
            log.debug("dhcp.unencodable", interface=self.interface, error=str(error))
        except Exception as error:  # noqa: BLE001 — the loop must outlive any bug: counted, logged once
            self._count_unexpected(error)

    def _count_unexpected(self, error: Exception) -> None:
        self.counters.dropped[UNEXPECTED_ERROR] += 1
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
            self.counters.dropped[TRANSPORT_CLOSED] += 1
            return
        self.transport.sendto(payload, (dotted(destination.address), destination.port))
        kind = reply.message_type
        self.counters.replied[kind.name if kind is not None else "UNKNOWN"] += 1
        if request.message_type is not MessageType.INFORM:
            self._log_lease(request, reply)

    def _log_lease(self, request: DhcpMessage, reply: DhcpMessage | None) -> None:
        if not log.is_enabled_for(logging.INFO):  # the fields cost more than the filtered call: skip them
            return
        source = "cache" if answered_from_cache() else "region"
        log.info("dhcp.lease", **lease_fields(request, reply, self.rack.rack_id, source), interface=self.interface)

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


def lease_fields(request: DhcpMessage, reply: DhcpMessage | None, rack_id: str, source: str) -> dict[str, str | None]:
    """The ``dhcp.lease`` line's fields: of the reply (OFFER, ACK, NAK) or, without one, of the request (RELEASE,
    DECLINE). ``subnet`` is known only from a reply carrying an address and its mask (option 1)."""
    kind = (reply or request).message_type
    return {
        "type": kind.name if kind is not None else "UNKNOWN",
        "mac": mac_text(request),
        "ip": _lease_address(request, reply),
        "subnet": _subnet_of(reply) if reply is not None else None,
        "rack": rack_id,
        "xid": f"0x{request.xid:08x}",
        "source": source,
    }


def _lease_address(request: DhcpMessage, reply: DhcpMessage | None) -> str | None:
    """yiaddr of an OFFER or ACK; else what the client named: option 50 (DECLINE, INIT-REBOOT) or ciaddr."""
    if reply is not None and reply.yiaddr != UNSPECIFIED:
        return str(reply.yiaddr)
    requested = request.option(Option.REQUESTED_IP)
    if requested is not None and len(requested) == 4:
        return str(IPv4Address(requested))
    return str(request.ciaddr) if request.ciaddr != UNSPECIFIED else None


def _subnet_of(reply: DhcpMessage) -> str | None:
    """yiaddr's network in CIDR notation, from option 1; None without an address or a contiguous mask."""
    mask_option = reply.option(Option.SUBNET_MASK)
    if reply.yiaddr == UNSPECIFIED or mask_option is None or len(mask_option) != 4:
        return None
    mask = int.from_bytes(mask_option)
    prefix = mask.bit_count()
    if mask != (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        return None
    return f"{IPv4Address(int(reply.yiaddr) & mask)}/{prefix}"


async def serve_interface(
    interface: str,
    rack_id: str,
    leases: LeaseSource,
    *,
    port: int = SERVER_PORT,
    address: IPv4Address | None = None,
    counters: ServerCounters | None = None,
    max_in_flight: int = 256,
    http_port: int = HTTP_PORT,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
) -> DhcpProtocol:
    """Open ``interface``'s socket and start answering; the caller closes the returned protocol. ``http_port``
    is the rack's HTTP boot port that boot URLs (iPXE, UEFI HTTP boot) name; requests older than ``max_wait_s``
    are dropped as stale."""
    link_address = address if address is not None else await interface_address(interface)
    rack = RackView(rack_id=rack_id, link_address=link_address, http_port=http_port)
    protocol = DhcpProtocol(
        interface, rack, leases, counters=counters, max_in_flight=max_in_flight, max_wait_s=max_wait_s
    )
    InterfaceSocket(open_interface_socket(interface, port), protocol).start()
    log.info("dhcp.serving", interface=interface, address=str(link_address), port=port)
    return protocol
