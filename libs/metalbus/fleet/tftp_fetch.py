"""Fetch one file over TFTP as PXE firmware does: RFC 1350 RRQ in octet mode with blksize/tsize (RFC 2347-2349).

Real UDP from the machine's own address (a socket made in the fleet's namespace and bound there). The server
answers from a new port (its transfer id) with an OACK (options taken: ACK block 0) or straight with DATA block 1
(no options: 512-byte blocks); every DATA is acknowledged; a block shorter than the block size ends the file. A
lost packet (the RRQ or the last ACK) is sent again after each of a growing series of waits, as PXE loaders do.
Duplicates of a block already acknowledged are acknowledged again (the server lost our ACK) and not kept twice.
"""

import asyncio
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from metalbus.netns import NetworkNamespace

RRQ, DATA, ACK, ERROR, OACK = 1, 3, 4, 5, 6
DEFAULT_BLOCK_SIZE = 512
FIRMWARE_BLOCK_SIZE = 1468
"""What PXE ROMs ask: the most that fits an Ethernet frame with IP, UDP and TFTP headers."""
MAX_FILE_BYTES = 64 * 1024 * 1024


class TftpError(Exception):
    """The server refused (ERROR packet) or stopped answering."""


PXELINUX_TFTP_TIMEOUTS_S = (1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
"""How long PXE loaders wait before sending their last packet again, growing, about 40 s in all (pxelinux's
timeout table has the same shape); a fixed short wait gives up on a lossy link where firmware would not."""


@dataclass
class _Inbox(asyncio.DatagramProtocol):
    packets: asyncio.Queue[tuple[bytes, tuple[str, int]]] = field(default_factory=asyncio.Queue)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.put_nowait((data, addr))


def read_request(path: str, block_size: int) -> bytes:
    options = b"".join(f"{name}\0{value}\0".encode() for name, value in (("blksize", block_size), ("tsize", 0)))
    return struct.pack("!H", RRQ) + path.encode() + b"\0octet\0" + options


def parse_options(payload: bytes) -> dict[str, str]:
    words = payload.split(b"\0")
    return {words[i].decode().lower(): words[i + 1].decode() for i in range(0, len(words) - 1, 2) if words[i]}


@dataclass
class TftpTransfer:
    block_size: int = DEFAULT_BLOCK_SIZE
    received: bytearray = field(default_factory=bytearray)
    next_block: int = 1
    done: bool = False

    def take(self, packet: bytes) -> bytes | None:
        """The ACK to send for a packet of the transfer, or None to ignore it; TftpError on ERROR."""
        opcode = struct.unpack_from("!H", packet)[0] if len(packet) >= 4 else 0
        if opcode == ERROR:
            code = struct.unpack_from("!H", packet, 2)[0]
            message = packet[4:].rstrip(b"\0").decode(errors="replace")
            raise TftpError(f"TFTP error {code}: {message}")
        if opcode == OACK and self.next_block == 1 and not self.received:
            self.block_size = int(parse_options(packet[2:]).get("blksize", DEFAULT_BLOCK_SIZE))
            return struct.pack("!HH", ACK, 0)
        if opcode != DATA:
            return None
        block = struct.unpack_from("!H", packet, 2)[0]
        if block == (self.next_block - 1) & 0xFFFF:
            return struct.pack("!HH", ACK, block)  # a repeat: our ACK was lost
        if block != self.next_block & 0xFFFF:
            return None
        data = packet[4:]
        self.received += data
        if len(self.received) > MAX_FILE_BYTES:
            raise TftpError(f"file over {MAX_FILE_BYTES} bytes")
        self.next_block += 1
        self.done = len(data) < self.block_size
        return struct.pack("!HH", ACK, block)


async def tftp_fetch(
    namespace: NetworkNamespace,
    local_address: IPv4Address,
    server: tuple[IPv4Address, int],
    path: str,
    *,
    timeouts_s: Sequence[float] = PXELINUX_TFTP_TIMEOUTS_S,
) -> bytes:
    """The whole file ``path`` from ``server`` (address, port), asked from ``local_address``; after each silence
    of the next of ``timeouts_s`` the last packet is sent again, after the last one the fetch fails."""
    sock = namespace.open_socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(local_address), 0))
    transport, inbox = await asyncio.get_running_loop().create_datagram_endpoint(_Inbox, sock=sock)
    try:
        return await _run_transfer(transport, inbox, (str(server[0]), server[1]), path, timeouts_s)
    finally:
        transport.close()


async def _run_transfer(
    transport: asyncio.DatagramTransport,
    inbox: _Inbox,
    server: tuple[str, int],
    path: str,
    timeouts_s: Sequence[float],
) -> bytes:
    transfer, peer = TftpTransfer(), None
    last_sent, last_destination = read_request(path, FIRMWARE_BLOCK_SIZE), server
    transport.sendto(last_sent, last_destination)
    misses = 0
    while not transfer.done:
        try:
            packet, source = await asyncio.wait_for(inbox.packets.get(), timeouts_s[min(misses, len(timeouts_s) - 1)])
        except TimeoutError:
            misses += 1
            if misses >= len(timeouts_s):
                silence = f"{sum(timeouts_s):g} s"
                raise TftpError(f"no answer from {server[0]}:{server[1]} for {path} in {silence}") from None
            transport.sendto(last_sent, last_destination)
            continue
        if source[0] != server[0] or (peer is not None and source != peer):
            continue  # not our server's transfer
        answer = transfer.take(packet)
        if answer is not None:
            peer, misses = source, 0
            last_sent, last_destination = answer, source
            transport.sendto(answer, source)
    return bytes(transfer.received)
