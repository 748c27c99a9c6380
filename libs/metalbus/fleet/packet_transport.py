"""Many MACs on one interface: DHCP frames built and read by hand on an AF_PACKET socket, replies handed per MAC.

Each virtual machine's DHCP messages leave with its own MAC as the Ethernet source (what the server records as
chaddr and answers); replies reach the interface broadcast, or unicast to the offered address and the machine's
MAC (the server sets a neighbour entry for it), or (renewals) unicast to the leased address; all are read here,
whatever the destination, and queued for the MAC in the reply's chaddr (the client checks the xid). Frames this
socket sent itself are skipped. A socket filter (classic BPF, what ``tcpdump -dd 'ip and udp dst port 68'``
prints) keeps every other frame out of the socket: in a boot storm the machines' TFTP and HTTP traffic would
otherwise fill its receive buffer and the kernel would drop DHCP replies with it. Gratuitous ARP tells the rack
which MAC now answers for a machine's address: the namespace's kernel owns the leased addresses, on the
interface's own MAC.
"""

import asyncio
import contextlib
import ctypes
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

from metalbus.netns import NetworkNamespace
from metalbus_rack_dhcp.codec import DhcpDecodeError, decode_message, encode_message
from metalbus_rack_dhcp.messages import UNSPECIFIED, DhcpMessage

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
PACKET_OUTGOING = 4
BROADCAST_MAC = b"\xff" * 6
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
CLIENT_PORT, SERVER_PORT = 68, 67
IP_PROTOCOL_UDP = 17
MAX_FRAME = 65535
QUEUE_LIMIT = 64
ANNOUNCEMENTS = 3
RECEIVE_BUFFER_BYTES = 4 << 20
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
DHCP_REPLY_FILTER = (
    (0x28, 0, 0, 0x0000000C),  # ldh [12]            ethertype
    (0x15, 0, 8, 0x00000800),  # jeq #IPv4           else drop
    (0x30, 0, 0, 0x00000017),  # ldb [23]            IP protocol
    (0x15, 0, 6, 0x00000011),  # jeq #UDP            else drop
    (0x28, 0, 0, 0x00000014),  # ldh [20]            flags and fragment offset
    (0x45, 4, 0, 0x00001FFF),  # jset #0x1fff        a later fragment: drop
    (0xB1, 0, 0, 0x0000000E),  # ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 0x00000010),  # ldh [x + 16]        UDP destination port
    (0x15, 0, 1, 0x00000044),  # jeq #68             else drop
    (0x06, 0, 0, 0x00040000),  # ret #262144         keep the frame
    (0x06, 0, 0, 0x00000000),  # ret #0              drop it
)

_ETHERNET = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True)
class ReceivedReply:
    message: DhcpMessage
    server_mac: bytes


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def udp_frame(
    payload: bytes, *, source_mac: bytes, destination_mac: bytes, source: IPv4Address, destination: IPv4Address
) -> bytes:
    """An Ethernet frame holding one IPv4/UDP datagram from port 68 to 67 (UDP checksum 0: none, as IPv4 allows)."""
    udp = _UDP.pack(CLIENT_PORT, SERVER_PORT, _UDP.size + len(payload), 0) + payload
    header = _IPV4.pack(0x45, 0, _IPV4.size + len(udp), 0, 0, 64, IP_PROTOCOL_UDP, 0, source.packed, destination.packed)
    header = header[:10] + ipv4_checksum(header).to_bytes(2, "big") + header[12:]
    return _ETHERNET.pack(destination_mac, source_mac, ETH_P_IP) + header + udp


def dhcp_reply_in(frame: bytes) -> ReceivedReply | None:
    """The DHCP message of a frame to UDP port 68, or None for any other frame."""
    if len(frame) < _ETHERNET.size + _IPV4.size + _UDP.size:
        return None
    _, source_mac, ethertype = _ETHERNET.unpack_from(frame)
    if ethertype != ETH_P_IP:
        return None
    version_length, protocol = frame[_ETHERNET.size], frame[_ETHERNET.size + 9]
    header_length = (version_length & 0x0F) * 4
    if version_length >> 4 != 4 or protocol != IP_PROTOCOL_UDP:
        return None
    udp_at = _ETHERNET.size + header_length
    _, destination_port, udp_length, _ = _UDP.unpack_from(frame, udp_at)
    if destination_port != CLIENT_PORT:
        return None
    try:
        message = decode_message(frame[udp_at + _UDP.size : udp_at + udp_length])
    except DhcpDecodeError:
        return None
    return ReceivedReply(message, source_mac)


def gratuitous_arp(mac: bytes, address: IPv4Address) -> bytes:
    """An ARP request for ``address`` from ``address`` itself (Linux takes it as gratuitous and updates its cache)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, mac, address.packed, bytes(6), address.packed)
    return _ETHERNET.pack(BROADCAST_MAC, mac, ETH_P_ARP) + arp


def attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program (struct sock_fprog pointing at sock_filter records)."""
    instructions = b"".join(struct.pack("HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(instructions)
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PacketTransport:
    """The AF_PACKET socket of one interface, shared by every machine on it."""

    def __init__(self, namespace: NetworkNamespace, interface: str) -> None:
        self.interface = interface
        self._socket = namespace.open_socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        attach_filter(self._socket, DHCP_REPLY_FILTER)
        with contextlib.suppress(PermissionError):  # past rmem_max needs CAP_NET_ADMIN; the default still works
            self._socket.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        self._socket.bind((interface, ETH_P_ALL))
        self.mac: bytes = self._socket.getsockname()[4]
        self._queues: dict[bytes, asyncio.Queue[ReceivedReply]] = {}
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._socket.fileno(), self._readable)
        self.frames_sent = 0
        self.replies_received = 0

    def subscribe(self, mac: bytes) -> asyncio.Queue[ReceivedReply]:
        queue: asyncio.Queue[ReceivedReply] = asyncio.Queue(QUEUE_LIMIT)
        self._queues[mac] = queue
        return queue

    def unsubscribe(self, mac: bytes) -> None:
        self._queues.pop(mac, None)

    def send_dhcp(self, message: DhcpMessage, *, server: IPv4Address | None, server_mac: bytes | None) -> None:
        """Broadcast ``message`` (from ciaddr or 0.0.0.0), or unicast it to ``server`` at ``server_mac``."""
        unicast = server is not None and server_mac is not None
        frame = udp_frame(
            encode_message(message),
            source_mac=message.mac,
            destination_mac=server_mac if unicast and server_mac else BROADCAST_MAC,
            source=message.ciaddr if message.ciaddr != UNSPECIFIED else UNSPECIFIED,
            destination=server if unicast and server else LIMITED_BROADCAST,
        )
        self._send(frame)

    def announce(self, address: IPv4Address) -> None:
        """Gratuitous ARP, ``ANNOUNCEMENTS`` times: the rack's neighbour entry for the address names the machine's
        own MAC (rack-dhcp set it for the reply) and must be moved to the interface's, or the namespace's kernel
        never sees what the rack sends there; one lost announcement (a lossy link) would strand the machine."""
        frame = gratuitous_arp(self.mac, address)
        for _ in range(ANNOUNCEMENTS):
            self._send(frame)

    def close(self) -> None:
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()

    def _send(self, frame: bytes) -> None:
        with contextlib.suppress(BlockingIOError):  # a full socket buffer: lost, as on a wire; the client retries
            self._socket.send(frame)
            self.frames_sent += 1

    def _readable(self) -> None:
        for _ in range(256):  # bounded: let other callbacks run under a flood
            try:
                frame, address = self._socket.recvfrom(MAX_FRAME)
            except (BlockingIOError, InterruptedError):
                return
            if address[2] == PACKET_OUTGOING:
                continue
            reply = dhcp_reply_in(frame)
            queue = self._queues.get(reply.message.mac) if reply else None
            if reply and queue and not queue.full():
                self.replies_received += 1
                queue.put_nowait(reply)
