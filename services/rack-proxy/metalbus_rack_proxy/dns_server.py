"""rack-proxy's DNS server: UDP and TCP (length-prefixed) on one address and port; answers from the zone, forwards
the rest, counts everything. Garbage is dropped (or answered FORMERR) and counted, never raised."""

import asyncio
import contextlib
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import structlog

from metalbus_rack_proxy.dns_answers import Answerer, Forward
from metalbus_rack_proxy.dns_codec import (
    TCP_LENGTH,
    TCP_PAYLOAD_LIMIT,
    UDP_PAYLOAD_LIMIT,
    MalformedMessage,
    Query,
    Rcode,
    encode_error_for_header,
    encode_reply,
    parse_header,
    parse_query,
)
from metalbus_rack_proxy.dns_forwarder import Forwarder, UpstreamFailed
from metalbus_rack_proxy.dns_reply_cache import QUERY_ID_SIZE, RememberedReply, ReplyCache

log = structlog.get_logger("metalbus.rack_proxy.dns")

TCP_IDLE_TIMEOUT_S = 10.0
MAX_TCP_CONNECTIONS = 128
MAX_FORWARDS_IN_FLIGHT = 256
UDP_BATCH = 64
UDP_RECEIVE_SIZE = 4096
LATENCY_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@dataclass
class DnsCounters:
    """Queries by type, replies by rcode, forwards, drops by reason, and a latency histogram."""

    queries_by_type: Counter[int] = field(default_factory=Counter)
    replies_by_rcode: Counter[str] = field(default_factory=Counter)
    forwarded: int = 0
    forward_failures: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    latency_count: int = 0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum_s += seconds
        self.latency_count += 1
        for index, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.latency_buckets[index] += 1
                return
        self.latency_buckets[-1] += 1

    @property
    def dropped_malformed(self) -> int:
        return sum(self.dropped.values())


class DnsResolver:
    """Bytes in, bytes (or None: dropped) out. Local answers are computed without awaiting anything."""

    def __init__(self, answerer: Answerer, forwarder: Forwarder, counters: DnsCounters | None = None) -> None:
        self.answerer = answerer
        self.forwarder = forwarder
        self.counters = counters if counters is not None else DnsCounters()
        self.replies = ReplyCache()

    def answer_locally(self, data: bytes, limit: int) -> bytes | Query | None:
        """The reply, or the parsed query when it must be forwarded, or None when dropped."""
        remembered = self.replies.lookup(data, limit, self.answerer.generation)
        if remembered is not None:
            turn = self.answerer.take_turn(remembered.name) % len(remembered.tails) if remembered.rotating else 0
            tail = remembered.tails[turn]
            if tail is not None:
                self.counters.queries_by_type[remembered.qtype] += 1
                self.counters.replies_by_rcode[remembered.rcode_name] += 1
                return data[:QUERY_ID_SIZE] + tail
            self.answerer.untake_turn(remembered.name)
        try:
            query = parse_query(data)
        except MalformedMessage as error:
            return self._malformed(data, error)
        return self._answer_query(query, data, limit, remembered)

    def _answer_query(self, query: Query, data: bytes, limit: int, remembered: RememberedReply | None) -> bytes | Query:
        self.counters.queries_by_type[query.qtype] += 1
        rotation = self.answerer.rotation_size(query)
        turn = self.answerer.turn_of(query.name) % rotation
        decision = self.answerer.answer(query)
        if isinstance(decision, Forward):
            return query
        rcode = decision.rcode
        try:
            reply = encode_reply(query, rcode, decision.answers, decision.authority, limit=limit)
        except MalformedMessage as error:  # a zone name that cannot be encoded
            log.warning("dns.unencodable_answer", name=query.name, reason=error.reason)
            rcode = Rcode.SERVFAIL
            reply = encode_reply(query, rcode, limit=limit)
        self.counters.replies_by_rcode[rcode.name] += 1
        if self.answerer.zone is not None:
            if remembered is None or len(remembered.tails) != rotation:
                remembered = RememberedReply(query.name, query.qtype, rcode.name, [None] * rotation)
                self.replies.remember(data, limit, remembered)
            remembered.tails[turn] = reply[QUERY_ID_SIZE:]
        return reply

    async def forward(self, query: Query, data: bytes, limit: int) -> bytes:
        """The upstream's reply unchanged (the client's own EDNS size applies), or SERVFAIL."""
        self.counters.forwarded += 1
        try:
            reply = await self.forwarder.forward(query, data)
        except UpstreamFailed:
            self.counters.forward_failures += 1
            self.counters.replies_by_rcode[Rcode.SERVFAIL.name] += 1
            return encode_reply(query, Rcode.SERVFAIL, authoritative=False, limit=limit)
        self.counters.replies_by_rcode[_rcode_name(reply)] += 1
        return reply

    async def resolve(self, data: bytes, limit: int) -> bytes | None:
        started = time.perf_counter()
        outcome = self.answer_locally(data, limit)
        if isinstance(outcome, Query):
            outcome = await self.forward(outcome, data, limit)
        if outcome is not None:
            self.counters.observe_latency(time.perf_counter() - started)
        return outcome

    def _malformed(self, data: bytes, error: MalformedMessage) -> bytes | None:
        self.counters.dropped[error.reason] += 1
        log.debug("dns.malformed", reason=error.reason, size=len(data))
        try:
            header = parse_header(data)
        except MalformedMessage:
            return None
        if header.is_response:
            return None  # never answer a response: no reflection loops
        self.counters.replies_by_rcode[Rcode.FORMERR.name] += 1
        return encode_error_for_header(header, Rcode.FORMERR)


def _rcode_name(reply: bytes) -> str:
    code = parse_header(reply).rcode
    return Rcode(code).name if code in Rcode._value2member_map_ else str(code)


class _UdpServer:
    """Reads the socket directly when it is readable, up to ``UDP_BATCH`` datagrams per wake-up: a local answer is
    sent before the next datagram is read; a forward becomes a task (at most ``MAX_FORWARDS_IN_FLIGHT``)."""

    def __init__(self, resolver: DnsResolver, sock: socket.socket) -> None:
        self.resolver = resolver
        self.sock = sock
        self.forwards: set[asyncio.Task[None]] = set()
        self.closed = False

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()

    def _readable(self) -> None:
        for _ in range(UDP_BATCH):
            try:
                data, addr = self.sock.recvfrom(UDP_RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. an ICMP error queued on the socket
                log.debug("dns.udp_error", error=repr(error))
                return
            self._received(data, addr)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        started = time.perf_counter()
        outcome = self.resolver.answer_locally(data, UDP_PAYLOAD_LIMIT)
        if isinstance(outcome, Query):
            if len(self.forwards) >= MAX_FORWARDS_IN_FLIGHT:
                self.resolver.counters.dropped["too many forwards in flight"] += 1
                return
            task = asyncio.create_task(self._forward(outcome, data, addr, started))
            self.forwards.add(task)
            task.add_done_callback(self.forwards.discard)
        elif outcome is not None:
            self._send(outcome, addr, started)

    async def _forward(self, query: Query, data: bytes, addr: tuple[str, int], started: float) -> None:
        reply = await self.resolver.forward(query, data, UDP_PAYLOAD_LIMIT)
        if not self.closed:
            self._send(reply, addr, started)

    def _send(self, reply: bytes, addr: tuple[str, int], started: float) -> None:
        try:
            self.sock.sendto(reply, addr)
        except (BlockingIOError, InterruptedError):
            self.resolver.counters.dropped["send buffer full"] += 1
            return
        except OSError as error:
            log.debug("dns.udp_send_failed", error=repr(error))
            return
        self.resolver.counters.observe_latency(time.perf_counter() - started)


class DnsServer:
    """Listens on UDP and TCP; ``port`` is the bound port once started (0 picks a free one)."""

    def __init__(self, resolver: DnsResolver) -> None:
        self.resolver = resolver
        self._udp: _UdpServer | None = None
        self._tcp: asyncio.Server | None = None
        self._connections = asyncio.Semaphore(MAX_TCP_CONNECTIONS)
        self.port = 0

    async def start(self, address: str, port: int) -> None:
        self._tcp = await asyncio.start_server(self._serve_connection, address, port, reuse_address=True)
        self.port = int(self._tcp.sockets[0].getsockname()[1])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, self.port))
        except OSError:
            sock.close()
            await self.close()
            raise
        self._udp = _UdpServer(self.resolver, sock)
        self._udp.start()
        log.info("dns.listening", address=address, port=self.port)

    async def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        if self._udp is not None:
            self._udp.close()
            for task in list(self._udp.forwards):
                task.cancel()
            await asyncio.gather(*self._udp.forwards, return_exceptions=True)

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections.locked():
            self.resolver.counters.dropped["too many TCP connections"] += 1
            writer.close()
            return
        async with self._connections:
            try:
                await self._answer_messages(reader, writer)
            except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                pass  # the client went away or idled out: nothing to answer
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _answer_messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            async with asyncio.timeout(TCP_IDLE_TIMEOUT_S):
                (length,) = TCP_LENGTH.unpack(await reader.readexactly(TCP_LENGTH.size))
                data = await reader.readexactly(length)
            reply = await self.resolver.resolve(data, TCP_PAYLOAD_LIMIT)
            if reply is None:
                return  # unreadable: close the connection, the stream cannot be trusted any more
            writer.write(TCP_LENGTH.pack(len(reply)) + reply)
            await writer.drain()
