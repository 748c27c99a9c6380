"""One served interface's UDP socket as a datagram transport that tells how long each datagram waited.

asyncio's own datagram transport reads one datagram per wake-up of the selector and cannot say when a datagram
reached the host. Under overload the kernel's receive queue is where requests wait longest (a megabyte of
buffer holds about a second of a boot storm), so this transport asks the kernel to stamp every datagram on
arrival (``SO_TIMESTAMPNS``), reads up to ``reads_per_wakeup`` datagrams per wake-up with ``recvmsg``, and hands
each to the protocol with ``received_at``: its arrival on the protocol's monotonic clock. Replies are written
straight to the socket; a send that fails is reported to ``error_received`` (as asyncio's transport does) and
not retried: the client retransmits.
"""

import asyncio
import socket
import struct
import time
from collections.abc import Callable
from typing import Any, Protocol

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: also the control message's type
TIMESPEC = struct.Struct("@ll")  # struct timespec as SO_TIMESTAMPNS fills it: two native longs, seconds and nanoseconds
ANCILLARY_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
MAX_DATAGRAM_BYTES = 65535
READS_PER_WAKEUP = 64


class StampedDatagramProtocol(Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def datagram_received(self, data: bytes, addr: tuple[str | int, int], received_at: float | None = None) -> None: ...

    def error_received(self, exc: Exception) -> None: ...


class InterfaceSocket(asyncio.DatagramTransport):
    """Reads stamped datagrams for ``protocol`` from a bound, non-blocking UDP ``sock``; sends its replies."""

    def __init__(
        self,
        sock: socket.socket,
        protocol: StampedDatagramProtocol,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        reads_per_wakeup: int = READS_PER_WAKEUP,
    ) -> None:
        super().__init__()
        self._sock = sock
        self._protocol = protocol
        self._clock = clock
        self._wall_clock = wall_clock
        self._reads_per_wakeup = reads_per_wakeup
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False

    def start(self) -> None:
        """Stamp arrivals, tell the protocol its transport, and start reading on the running loop."""
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._loop = asyncio.get_running_loop()
        self._protocol.connection_made(self)
        self._loop.add_reader(self._sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        for _ in range(self._reads_per_wakeup):
            try:
                data, ancillary, _, addr = self._sock.recvmsg(MAX_DATAGRAM_BYTES, ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._protocol.error_received(error)
                return
            self._protocol.datagram_received(data, addr, received_at=self._arrival(ancillary))

    def _arrival(self, ancillary: list[tuple[int, int, bytes]]) -> float | None:
        """The kernel's stamp (wall-clock time) moved onto ``clock``; None without one."""
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= TIMESPEC.size:
                seconds, nanoseconds = TIMESPEC.unpack_from(payload)
                waited = self._wall_clock() - (float(seconds) + float(nanoseconds) / 1e9)
                return self._clock() - max(waited, 0.0)
        return None

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            self._sock.sendto(data, addr)
        except OSError as error:
            self._protocol.error_received(error)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    def abort(self) -> None:
        self.close()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._sock if name == "socket" else default
