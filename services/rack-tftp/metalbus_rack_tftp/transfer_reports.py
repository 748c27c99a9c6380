"""Tell the region which boot files went to whom: finished transfers queued, sent in batches, never blocking.

The TFTP and HTTP servers call :meth:`TransferReporter.observe` when a transfer ends (completed or not); a
background loop sends what has queued as one ``BootTransferReport`` every ``interval_s`` (or sooner once
``batch_max`` are waiting). A report the region does not take is retried with the same ``batch_id``, so it counts
once. The queue is bounded: when the region is away for long, the oldest transfers are dropped and counted —
serving boot files never waits on reporting them.
"""

import asyncio
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address

import structlog

from metalbus.bus import Bus
from metalbus.contracts.boot import (
    MAX_TRANSFERS_PER_REPORT,
    BootTransfer,
    BootTransferAck,
    BootTransferReport,
    TransferProtocol,
)
from metalbus.contracts.errors import MetalbusError
from metalbus.subjects import BOOT_TRANSFERS

log = structlog.get_logger("metalbus.rack_tftp.transfers")

SendReport = Callable[[BootTransferReport], Awaitable[BootTransferAck]]


def region_sender(bus: Bus, timeout_s: float = 5.0) -> SendReport:
    async def send(report: BootTransferReport) -> BootTransferAck:
        return await bus.request(BOOT_TRANSFERS, report, timeout=timeout_s)

    return send


@dataclass(frozen=True)
class FinishedTransfer:
    """What a server knows when a transfer ends."""

    protocol: TransferProtocol
    path: str
    client_address: str
    size_bytes: int
    completed: bool
    duration_s: float


TransferObserver = Callable[[FinishedTransfer], None]


def ipv4_of(address: str) -> IPv4Address | None:
    """The client's IPv4 address (an IPv4-mapped IPv6 one unwrapped); None for anything else."""
    try:
        parsed = ip_address(address)
    except ValueError:
        return None
    if isinstance(parsed, IPv6Address):
        return parsed.ipv4_mapped
    return parsed


@dataclass
class TransferReportCounters:
    observed: int = 0
    reported: int = 0
    attributed: int = 0
    dropped: int = 0
    """Transfers that left the full queue unreported (the region was away too long)."""
    report_failures: int = 0
    not_ipv4: int = 0


class TransferReporter:
    def __init__(
        self,
        rack_id: str,
        send: SendReport,
        *,
        batch_max: int = 200,
        interval_s: float = 0.5,
        queue_max: int = 10_000,
        retry_delay_s: float = 1.0,
    ) -> None:
        self.rack_id = rack_id
        self._send = send
        self._batch_max = min(batch_max, MAX_TRANSFERS_PER_REPORT)
        self._interval_s = interval_s
        self._retry_delay_s = retry_delay_s
        self._queue: deque[BootTransfer] = deque(maxlen=queue_max)
        self._in_flight: BootTransferReport | None = None
        self._wake = asyncio.Event()
        self.counters = TransferReportCounters()

    def observe(self, finished: FinishedTransfer) -> None:
        """Queue one finished transfer (called from the servers' loop callbacks: no I/O, no waiting)."""
        client = ipv4_of(finished.client_address)
        if client is None:
            self.counters.not_ipv4 += 1
            return
        transfer = BootTransfer(
            protocol=finished.protocol,
            path=finished.path[:1024],
            client_ip=client,
            size_bytes=max(finished.size_bytes, 0),
            completed=finished.completed,
            duration_s=max(finished.duration_s, 0.0),
            finished_at=datetime.now(UTC),
        )
        if len(self._queue) == self._queue.maxlen:
            self.counters.dropped += 1
        self._queue.append(transfer)
        self.counters.observed += 1
        if len(self._queue) >= self._batch_max:
            self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Send reports until ``stop``; then one last attempt for what is queued."""
        while not stop.is_set():
            waker = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waker, stopper}, timeout=self._interval_s, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            stopper.cancel()
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self._retry_delay_s)
        await self.flush()

    async def flush(self) -> bool:
        """Send the pending report (a retried one first); False if the region did not take it."""
        while self._in_flight is not None or self._queue:
            if self._in_flight is None:
                taken = [self._queue.popleft() for _ in range(min(self._batch_max, len(self._queue)))]
                batch_id = f"transfers-{self.rack_id}-{secrets.token_hex(8)}"
                self._in_flight = BootTransferReport(rack_id=self.rack_id, batch_id=batch_id, transfers=taken)
            try:
                ack = await self._send(self._in_flight)
            except (MetalbusError, OSError) as error:
                self.counters.report_failures += 1
                log.info("transfers.report_failed", error=str(error), waiting=len(self._in_flight.transfers))
                return False
            self.counters.reported += ack.received
            self.counters.attributed += ack.attributed
            self._in_flight = None
        return True
