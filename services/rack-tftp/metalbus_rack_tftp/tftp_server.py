"""The TFTP server's sockets and loop: read requests in, files out by blocks, one ephemeral port per transfer.

One listen socket (port 69 unless configured) takes requests. It is read with ``recvmsg`` and ``IP_PKTINFO``, so
a server bound to ``0.0.0.0`` still knows which rack address each request reached: that address is given to the
file source (a boot config's URLs use it) and each transfer's own socket is bound to it (port 0), so every reply
comes from the address the client talked to. IPv4 only.

Rules a transfer follows (RFC 1350, 2347-2349, 7440):
- read-only: a WRQ gets error 2 (access violation); a mode other than octet or netascii gets error 4;
- a window of ``windowsize`` DATA blocks is sent, then the server waits for the ACK of a block in that window and
  sends the window that follows it; a duplicate or stale ACK is ignored: only a timeout resends (no Sorcerer's
  Apprentice), with the wait doubling at each try up to ``max_retry_timeout_s``, and after ``max_retries``
  unanswered tries the transfer is dropped and its file and socket freed (a vanished client holds nothing);
- block numbers roll over from 65535 to 0 (files over 32 MiB at 512-byte blocks);
- a packet from another address or port than the client's gets error 5 to its sender and changes nothing;
- over ``max_concurrent_transfers`` a request is dropped and counted, not refused: PXE firmware retransmits an
  unanswered request a few seconds later, while most ROMs abandon the boot on an error packet;
- a retransmitted request (same client address and port while its transfer runs) is dropped and counted.
"""

import asyncio
import socket
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from metalbus_rack_tftp.sources import FileRefused, FileSource, MemoryFile, OpenedFile, RefusalReason, Requester
from metalbus_rack_tftp.tftp_codec import (
    BLOCK_NUMBERS,
    Ack,
    ErrorCode,
    MalformedPacket,
    NegotiationLimits,
    Opcode,
    Request,
    decode_packet,
    encode_error,
    encode_option_ack,
    negotiate,
    to_netascii,
)
from metalbus_rack_tftp.tftp_codec import Error as ErrorPacket
from metalbus_rack_tftp.transfer_reports import FinishedTransfer, TransferObserver

log = structlog.get_logger("metalbus.rack_tftp")

MAX_DATAGRAM = 65536
MAX_NETASCII_BYTES = 16 * 1024 * 1024
READ_AHEAD_BYTES = 64 * 1024
READS_PER_WAKE_UP = 64
IP_PKTINFO: int = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; typeshed does not declare it everywhere
_PKTINFO = struct.Struct("=I4s4s")
_DATA_HEADER = struct.Struct("!HH")
_ACK_OPCODE = b"\x00\x04"
_REFUSAL_ERRORS = {
    RefusalReason.NOT_FOUND: ErrorCode.FILE_NOT_FOUND,
    RefusalReason.ACCESS_VIOLATION: ErrorCode.ACCESS_VIOLATION,
    RefusalReason.UNAVAILABLE: ErrorCode.NOT_DEFINED,
    RefusalReason.REGION_SILENT: ErrorCode.NOT_DEFINED,
}
Client = tuple[str, int]


@dataclass(frozen=True)
class TftpServerSettings:
    max_concurrent_transfers: int = 512
    max_blksize: int = 1468
    max_windowsize: int = 64
    retry_timeout_s: float = 1.0
    """First wait for an ACK when the client did not negotiate ``timeout``; doubled at each retry."""
    max_retry_timeout_s: float = 5.0
    max_retries: int = 5
    open_timeout_s: float = 5.0
    """How long a file source may take to answer (a dynamic source asks the region)."""


@dataclass
class TftpCounters:
    """What the server saw: requests, transfers by outcome, refusals and drops by reason, resends."""

    requests: int = 0
    transfers_completed: int = 0
    transfers_failed: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    retransmits: int = 0
    """Timeouts after which the transfer resent its window (or its OACK)."""
    unknown_transfer_ids: int = 0


class ReadTransfer:
    """One file going to one client over its own socket; finishes by calling ``finished(failure or None)``.

    The socket is read by the loop's reader callback and written with ``sendto`` directly: no asyncio
    transport, no task, no per-block allocation beyond the packet itself.
    """

    def __init__(
        self,
        sock: socket.socket,
        file: OpenedFile,
        client: Client,
        request: Request,
        settings: TftpServerSettings,
        counters: TftpCounters,
        finished: Callable[[str | None], None],
    ) -> None:
        negotiated = negotiate(
            request.options, file.size, NegotiationLimits(settings.max_blksize, settings.max_windowsize)
        )
        self._socket, self._file, self._client, self._counters, self._finished = sock, file, client, counters, finished
        self._blksize = negotiated.options.blksize
        self._window = negotiated.options.windowsize
        self._first_timeout_s = float(negotiated.options.timeout_s or settings.retry_timeout_s)
        self._max_timeout_s = max(settings.max_retry_timeout_s, self._first_timeout_s)
        self._max_retries = settings.max_retries
        self._last_block = file.size // self._blksize + 1
        self._acked = 0
        self._option_ack = encode_option_ack(negotiated.acknowledged) if negotiated.acknowledged else None
        self._retries = 0
        self._deadline = 0.0
        self._read_ahead = memoryview(b"")
        self._read_ahead_offset = 0
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def start(self) -> None:
        self._loop.add_reader(self._socket.fileno(), self._on_readable)
        self._send_next()
        self._arm_timer()

    def _on_readable(self) -> None:
        """One datagram per wake-up: a client sends one ACK per window, so there is rarely a second one queued
        (and the loop wakes again if there is); trying for more would cost a failed ``recvfrom`` per ACK."""
        try:
            data, addr = self._socket.recvfrom(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:  # an ICMP error queued on the socket: the client is gone or unreachable
            log.debug("tftp.socket_error", client=self._client[0], error=repr(error))
            return
        if addr != self._client:
            self._answer_unknown_transfer_id(addr)
        elif len(data) == 4 and data[:2] == _ACK_OPCODE:
            self._on_ack((data[2] << 8) | data[3])
        else:
            self._on_other_packet(data)

    def abort(self, reason: str) -> None:
        self._finish(reason)

    def _on_ack(self, block: int) -> None:
        if self._option_ack is not None:
            if block == 0:
                self._option_ack = None
                self._advance_after_ack()
            return
        distance = (block - self._acked) % BLOCK_NUMBERS
        if distance == 0 or distance > min(self._window, self._last_block - self._acked):
            return  # a duplicate or stale ACK: only a timeout resends
        self._acked += distance
        if self._acked >= self._last_block:
            self._finish(None)
            return
        self._advance_after_ack()

    def _advance_after_ack(self) -> None:
        self._retries = 0
        self._send_next()
        self._arm_timer()

    def _on_other_packet(self, data: bytes) -> None:
        try:
            packet = decode_packet(data)
        except MalformedPacket:
            self._counters.dropped["malformed"] += 1
            return
        if isinstance(packet, ErrorPacket):
            log.debug("tftp.client_error", client=self._client[0], code=packet.code, message=packet.message)
            self._finish("aborted-by-client")
        elif not isinstance(packet, Ack):
            self._counters.dropped["unexpected-packet"] += 1

    def _answer_unknown_transfer_id(self, addr: Client) -> None:
        self._counters.unknown_transfer_ids += 1
        self._send(encode_error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID"), addr)

    def _send(self, packet: bytes, to: Client) -> None:
        try:
            self._socket.sendto(packet, to)
        except (BlockingIOError, InterruptedError):
            self._counters.dropped["send-buffer-full"] += 1  # the timeout resends
        except OSError as error:
            log.debug("tftp.send_failed", client=to[0], error=repr(error))

    def _send_next(self) -> None:
        """The OACK while it is not acknowledged, else the window after the last acknowledged block."""
        if self._option_ack is not None:
            self._send(self._option_ack, self._client)
            return
        first = self._acked + 1
        count = min(self._acked + self._window, self._last_block) - self._acked
        blksize, client, sendto, pack = self._blksize, self._client, self._socket.sendto, _DATA_HEADER.pack
        chunk, start = self._bytes_at(self._acked * blksize, count * blksize)
        try:
            for index in range(count):
                payload = chunk[start + index * blksize : start + (index + 1) * blksize]
                sendto(pack(Opcode.DATA, (first + index) % BLOCK_NUMBERS) + payload, client)
        except (BlockingIOError, InterruptedError):
            self._counters.dropped["send-buffer-full"] += 1  # the rest of the window: the timeout resends
        except OSError as error:
            log.debug("tftp.send_failed", client=client[0], error=repr(error))

    def _bytes_at(self, offset: int, length: int) -> tuple[memoryview, int]:
        """A view holding ``length`` bytes from ``offset`` (fewer at the end of the file), and where they start
        in it. Reads ahead by READ_AHEAD_BYTES so that lockstep transfers make one ``pread`` per many blocks."""
        buffered = self._read_ahead
        start = offset - self._read_ahead_offset
        if start < 0 or (start + length > len(buffered) and self._read_ahead_offset + len(buffered) < self._file.size):
            buffered = memoryview(self._file.read(offset, max(length, READ_AHEAD_BYTES)))
            self._read_ahead, self._read_ahead_offset, start = buffered, offset, 0
        return buffered, start

    def _arm_timer(self) -> None:
        wait = min(self._first_timeout_s * (1 << min(self._retries, 16)), self._max_timeout_s)
        self._deadline = self._loop.time() + wait
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        """Resend after a silence; the deadline moves on every ACK, so the timer re-arms itself until it passes."""
        self._timer = None
        if self._done:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._retries += 1
        if self._retries > self._max_retries:
            self._finish("timeout")
            return
        self._counters.retransmits += 1
        self._send_next()
        self._arm_timer()

    def _finish(self, failure: str | None) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        self._file.close()
        self._finished(failure)


class TftpServer:
    """The listen socket, the transfers it started, and the counters; ``close`` frees everything."""

    def __init__(
        self,
        sock: socket.socket,
        source: FileSource,
        settings: TftpServerSettings,
        on_transfer: TransferObserver | None = None,
    ) -> None:
        self._socket = sock
        self._source = source
        self._settings = settings
        self._on_transfer = on_transfer
        self._loop = asyncio.get_running_loop()
        self._bound_address: str = sock.getsockname()[0]
        self._transfers: dict[Client, ReadTransfer | None] = {}
        self._openings: set[asyncio.Task[None]] = set()
        self.counters = TftpCounters()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @property
    def port(self) -> int:
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def active_transfers(self) -> int:
        return len(self._transfers)

    def close(self) -> None:
        if self._socket.fileno() < 0:
            return
        self._loop.remove_reader(self._socket.fileno())
        self._socket.close()
        for task in list(self._openings):
            task.cancel()
        for transfer in list(self._transfers.values()):
            if transfer is not None:
                transfer.abort("server-closed")
        self._transfers.clear()

    def _on_readable(self) -> None:
        for _ in range(READS_PER_WAKE_UP):
            try:
                data, ancillary, _flags, client = self._socket.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_PKTINFO.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                log.debug("tftp.receive_failed", error=repr(error))
                return
            self._on_datagram(data, client, self._local_address(ancillary))

    def _local_address(self, ancillary: list[tuple[int, int, bytes]]) -> str:
        for level, kind, data in ancillary:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _PKTINFO.size:
                return socket.inet_ntoa(_PKTINFO.unpack_from(data)[1])
        return self._bound_address

    def _on_datagram(self, data: bytes, client: Client, local_address: str) -> None:
        try:
            packet = decode_packet(data)
        except MalformedPacket as error:
            self.counters.dropped["malformed"] += 1
            log.debug("tftp.dropped", client=client[0], reason="malformed", detail=str(error))
            return
        if not isinstance(packet, Request):
            self.counters.dropped["not-a-request"] += 1
            return
        self.counters.requests += 1
        if packet.opcode is Opcode.WRQ:
            self._refuse(client, local_address, "write-request", ErrorCode.ACCESS_VIOLATION, "read-only server")
        elif packet.mode not in ("octet", "netascii"):
            self._refuse(client, local_address, "mode", ErrorCode.ILLEGAL_OPERATION, f"mode {packet.mode!r}")
        elif client in self._transfers:
            self.counters.dropped["duplicate-request"] += 1
        elif len(self._transfers) >= self._settings.max_concurrent_transfers:
            self.counters.dropped["busy"] += 1
            log.debug("tftp.dropped", client=client[0], reason="busy", filename=packet.filename)
        else:
            self._transfers[client] = None
            task = self._loop.create_task(self._start_transfer(packet, client, local_address))
            self._openings.add(task)
            task.add_done_callback(self._openings.discard)

    def _refuse(self, client: Client, local_address: str, reason: str, code: ErrorCode, message: str) -> None:
        self.counters.refused[reason] += 1
        log.debug("tftp.refused", client=client[0], reason=reason, message=message)
        pktinfo = _PKTINFO.pack(0, socket.inet_aton(local_address), bytes(4))
        try:
            self._socket.sendmsg([encode_error(code, message)], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, client)
        except OSError as error:
            log.debug("tftp.send_failed", client=client[0], error=repr(error))

    async def _start_transfer(self, request: Request, client: Client, local_address: str) -> None:
        requester = Requester(client[0], client[1], local_address, "tftp")
        try:
            opened = await self._open(request, requester)
        except FileRefused as refusal:
            del self._transfers[client]
            if refusal.reason is RefusalReason.REGION_SILENT:  # say nothing: the client asks again in a second
                self.counters.dropped["region-silent"] += 1
                log.debug("tftp.dropped", client=client[0], reason="region-silent", filename=request.filename)
                return
            self._refuse(client, local_address, refusal.reason.value, _REFUSAL_ERRORS[refusal.reason], refusal.message)
            return
        except Exception as error:  # a source's bug must not leave the client's slot taken
            del self._transfers[client]
            log.error("tftp.source_failed", filename=request.filename, error=repr(error), exc_info=error)
            self._refuse(client, local_address, "source-failed", ErrorCode.NOT_DEFINED, "internal error")
            return
        try:
            sock = transfer_socket(local_address)
        except OSError as error:
            opened.close()
            del self._transfers[client]
            self.counters.transfers_failed["no-socket"] += 1
            log.warning("tftp.no_transfer_socket", client=client[0], error=repr(error))
            return
        finished = self._finisher(client, request.filename, opened.size)
        transfer = ReadTransfer(sock, opened, client, request, self._settings, self.counters, finished)
        self._transfers[client] = transfer
        log.debug("tftp.transfer", client=client[0], filename=request.filename, size=opened.size)
        transfer.start()

    async def _open(self, request: Request, requester: Requester) -> OpenedFile:
        """The file, netascii-converted when asked; the source's silence past ``open_timeout_s`` is UNAVAILABLE."""
        try:
            opened = await asyncio.wait_for(
                self._source.open(request.filename, requester), self._settings.open_timeout_s
            )
        except TimeoutError:
            raise FileRefused(RefusalReason.REGION_SILENT, "file source did not answer in time") from None
        if request.mode != "netascii":
            return opened
        try:
            if opened.size > MAX_NETASCII_BYTES:
                raise FileRefused(RefusalReason.ACCESS_VIOLATION, "file too large for netascii; use octet mode")
            return MemoryFile(to_netascii(opened.read(0, opened.size)))
        finally:
            opened.close()

    def _finisher(self, client: Client, filename: str, size: int) -> Callable[[str | None], None]:
        started = self._loop.time()

        def finished(failure: str | None) -> None:
            self._transfers.pop(client, None)
            if failure is None:
                self.counters.transfers_completed += 1
            else:
                self.counters.transfers_failed[failure] += 1
                log.debug("tftp.transfer_failed", client=client[0], reason=failure)
            if self._on_transfer is not None:
                duration_s = self._loop.time() - started
                self._on_transfer(FinishedTransfer("tftp", filename, client[0], size, failure is None, duration_s))

        return finished


def transfer_socket(local_address: str) -> socket.socket:
    """A non-blocking UDP socket on ``local_address`` and a free port: the transfer's own TID."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((local_address, 0))
    except OSError:
        sock.close()
        raise
    return sock


async def serve_tftp(
    address: str,
    port: int,
    source: FileSource,
    settings: TftpServerSettings | None = None,
    on_transfer: TransferObserver | None = None,
) -> TftpServer:
    """Listen on ``address:port`` (``0.0.0.0`` for every IPv4 address; port 0 for any free port) and serve.

    No SO_REUSEADDR: a second server on the same port fails to start instead of sharing the requests."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setblocking(False)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    server = TftpServer(sock, source, settings or TftpServerSettings(), on_transfer)
    log.info("tftp.serving", address=address, port=server.port)
    return server
