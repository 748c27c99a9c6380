"""The rack's syslog relay: UDP and TCP listeners, a per-source rate limit, batches to the region, a bounded queue.

Every received line is parsed (malformed ones kept raw) and queued; a flusher sends the queue to the region in
batches of at most ``batch_max`` lines, at least every ``batch_interval_s``. Lines beyond a source's token bucket
are counted and replaced by one summary line "N lines dropped by rate limit" per flush. While the region is away
the batch in flight is retried (same ``batch_id``, so it is stored once) and new lines queue up to ``queue_max``;
beyond that the oldest are dropped and counted. Nothing is dropped without a counter saying so.
"""

import asyncio
import contextlib
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

import structlog

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.contracts.syslog import SyslogAck, SyslogBatch, SyslogFormat, SyslogMessage
from metalbus.subjects import SYSLOG_INTAKE
from metalbus_rack_proxy.syslog_codec import TcpFramer, parse_line

log = structlog.get_logger("metalbus.rack_proxy.syslog")

SendBatch = Callable[[SyslogBatch], Awaitable[SyslogAck]]
RELAY_APP_NAME = "metalbus-syslog-relay"
READ_CHUNK = 65536


def region_sender(bus: Bus, timeout_s: float = 5.0) -> SendBatch:
    """Batches go to the region's ``region.syslog.intake`` (any replica)."""

    async def send(batch: SyslogBatch) -> SyslogAck:
        return await bus.request(SYSLOG_INTAKE, batch, timeout=timeout_s)

    return send


@dataclass(frozen=True)
class SyslogRelayConfig:
    host: str = "0.0.0.0"
    ports: tuple[int, ...] = (514, 5247)
    rate_per_source: float = 200.0
    burst_per_source: float = 1000.0
    batch_max: int = 200
    batch_interval_s: float = 0.5
    queue_max: int = 20_000
    max_tracked_sources: int = 4096
    max_tcp_connections: int = 512
    request_timeout_s: float = 5.0
    retry_delay_s: float = 1.0


@dataclass
class SyslogRelayCounters:
    received: int = 0
    malformed: int = 0
    rate_limited: int = 0
    queue_dropped: int = 0
    relayed: int = 0
    batches_sent: int = 0
    batch_failures: int = 0
    batches_rejected: int = 0
    tcp_refused: int = 0


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class SourceLimits:
    """Token buckets and drop counts per source address; the least recently seen sources are forgotten."""

    rate: float
    burst: float
    max_sources: int
    buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)
    dropped: dict[str, int] = field(default_factory=dict)

    def allow(self, source: str, now: float) -> bool:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst, self.burst, now)
            while len(self.buckets) > self.max_sources:
                self.buckets.popitem(last=False)
        self.buckets.move_to_end(source)
        if bucket.take(now):
            return True
        self.dropped[source] = self.dropped.get(source, 0) + 1
        return False

    def take_drop_counts(self) -> dict[str, int]:
        counts, self.dropped = self.dropped, {}
        return counts


def normalise_source(host: str) -> IPv4Address | IPv6Address:
    address = ip_address(host.split("%", 1)[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class SyslogRelay:
    def __init__(
        self,
        rack_id: str,
        send: SendBatch,
        config: SyslogRelayConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.rack_id = rack_id
        self.send = send
        self.config = config
        self.clock = clock
        self.wall_clock = wall_clock
        self.counters = SyslogRelayCounters()
        self.limits = SourceLimits(config.rate_per_source, config.burst_per_source, config.max_tracked_sources)
        self.queue: deque[SyslogMessage] = deque()
        self.in_flight: SyslogBatch | None = None
        self.batch_ready = asyncio.Event()
        self.listening = asyncio.Event()
        self.tcp_writers: set[asyncio.StreamWriter] = set()

    # -- receiving -------------------------------------------------------------------------------------
    def accept(self, source: str, data: bytes) -> None:
        """One datagram or TCP frame from ``source``: parse, rate-limit, queue."""
        self.counters.received += 1
        if not self.limits.allow(source, self.clock()):
            self.counters.rate_limited += 1
            return
        now = self.wall_clock()
        parsed = parse_line(data, now)
        if parsed.format is SyslogFormat.RAW:
            self.counters.malformed += 1
        self.enqueue(
            SyslogMessage(
                received_at=now,
                source_ip=normalise_source(source),
                facility=parsed.facility,
                severity=parsed.severity,
                hostname=parsed.hostname,
                app_name=parsed.app_name,
                proc_id=parsed.proc_id,
                msg_id=parsed.msg_id,
                timestamp=parsed.timestamp,
                structured_data=parsed.structured_data,
                text=parsed.text,
                raw=parsed.raw,
                format=parsed.format,
            )
        )

    def enqueue(self, message: SyslogMessage) -> None:
        if len(self.queue) >= self.config.queue_max:
            self.queue.popleft()
            self.counters.queue_dropped += 1
        self.queue.append(message)
        if len(self.queue) >= self.config.batch_max:
            self.batch_ready.set()

    def queue_rate_limit_summaries(self) -> None:
        now = self.wall_clock()
        for source, count in self.limits.take_drop_counts().items():
            self.enqueue(
                SyslogMessage(
                    received_at=now,
                    source_ip=normalise_source(source),
                    facility=5,  # syslog's own messages
                    severity=4,  # warning
                    app_name=RELAY_APP_NAME,
                    msg_id="rate-limited",
                    text=f"{count} lines dropped by rate limit",
                    format=SyslogFormat.RFC5424,
                )
            )
            log.info("syslog.rate_limited", source=source, dropped=count)

    # -- relaying ---------------------------------------------------------------------------------------
    def next_batch(self) -> SyslogBatch | None:
        if self.in_flight is None and self.queue:
            count = min(len(self.queue), self.config.batch_max)
            messages = [self.queue.popleft() for _ in range(count)]
            batch_id = f"syslog-{self.rack_id}-{uuid.uuid4().hex}"
            self.in_flight = SyslogBatch(rack_id=self.rack_id, batch_id=batch_id, messages=messages)
        if len(self.queue) < self.config.batch_max:
            self.batch_ready.clear()
        return self.in_flight

    async def flush(self) -> bool:
        """Send everything queued; False when the region could not take a batch (it stays in flight)."""
        self.queue_rate_limit_summaries()
        while (batch := self.next_batch()) is not None:
            try:
                await asyncio.wait_for(self.send(batch), timeout=self.config.request_timeout_s)
            except (MetalbusError, TimeoutError) as error:
                if isinstance(error, MetalbusError) and not error.retryable:
                    self.counters.batches_rejected += 1
                    self.in_flight = None
                    log.warning("syslog.batch_rejected", lines=len(batch.messages), error=str(error))
                    continue
                self.counters.batch_failures += 1
                log.info("syslog.region_unreachable", queued=len(self.queue), error=str(error))
                return False
            self.in_flight = None
            self.counters.batches_sent += 1
            self.counters.relayed += len(batch.messages)
        return True

    async def run_flusher(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.batch_ready.wait(), timeout=self.config.batch_interval_s)
            if not await self.flush():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.retry_delay_s)

    # -- listening --------------------------------------------------------------------------------------
    async def handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self.tcp_writers) >= self.config.max_tcp_connections or not peer:
            self.counters.tcp_refused += 1
            writer.close()
            return
        self.tcp_writers.add(writer)
        framer = TcpFramer()
        try:
            while chunk := await reader.read(READ_CHUNK):
                for frame in framer.feed(chunk):
                    self.accept(peer[0], frame)
            for frame in framer.finish():
                self.accept(peer[0], frame)
        except ConnectionError as error:
            log.debug("syslog.tcp_reset", source=peer[0], error=str(error))
        finally:
            self.tcp_writers.discard(writer)
            writer.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Listen on every configured port (UDP and TCP) and relay until ``stop``."""
        loop = asyncio.get_running_loop()
        transports: list[asyncio.DatagramTransport] = []
        servers: list[asyncio.Server] = []
        flusher = asyncio.create_task(self.run_flusher(stop), name="syslog-flusher")
        try:
            for port in self.config.ports:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: SyslogDatagramProtocol(self), local_addr=(self.config.host, port)
                )
                transports.append(transport)
                servers.append(await asyncio.start_server(self.handle_tcp, self.config.host, port))
            log.info("syslog.listening", host=self.config.host, ports=list(self.config.ports))
            self.listening.set()
            await stop.wait()
        finally:
            for transport in transports:
                transport.close()
            for server in servers:
                server.close()
            for writer in list(self.tcp_writers):
                writer.close()  # their handlers see end of stream and finish
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(TimeoutError):  # a last bounded try for what is still queued
                await asyncio.wait_for(self.flush(), timeout=self.config.request_timeout_s)


class SyslogDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: SyslogRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.relay.accept(str(addr[0]), data)
