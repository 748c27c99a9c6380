"""Forward a query rack-proxy is not authoritative for to the upstream resolvers: UDP with a timeout, TCP when the
UDP reply is truncated, the next upstream when one fails. The reply bytes are passed back unchanged."""

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from metalbus_rack_proxy.dns_codec import TCP_LENGTH, MalformedMessage, Query, parse_header

log = structlog.get_logger("metalbus.rack_proxy.dns")


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> "Upstream":
        """``192.0.2.53`` or ``192.0.2.53:5353``."""
        host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
        return cls(host, int(port)) if port else cls(text)


class UpstreamFailed(Exception):
    """No upstream gave a usable reply in time."""


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        with contextlib.suppress(MalformedMessage):
            header = parse_header(data)
            if header.is_response and header.id == self.query_id and not self.reply.done():
                self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream], *, timeout_s: float = 2.0) -> None:
        self.upstreams = tuple(upstreams)
        self.timeout_s = timeout_s

    async def forward(self, query: Query, raw: bytes) -> bytes:
        """The first usable upstream reply; UpstreamFailed when none answered."""
        for upstream in self.upstreams:
            try:
                reply = await self._over_udp(upstream, query, raw)
                if parse_header(reply).truncated:
                    reply = await self._over_tcp(upstream, query, raw)
                return reply
            except (OSError, TimeoutError, MalformedMessage, asyncio.IncompleteReadError) as error:
                log.debug("dns.upstream_failed", upstream=f"{upstream.host}:{upstream.port}", error=repr(error))
        raise UpstreamFailed(f"no upstream answered {query.name!r}")

    async def _over_udp(self, upstream: Upstream, query: Query, raw: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _OneReply(query.header.id), remote_addr=(upstream.host, upstream.port)
        )
        try:
            transport.sendto(raw)
            return await asyncio.wait_for(protocol.reply, timeout=self.timeout_s)
        finally:
            transport.close()

    async def _over_tcp(self, upstream: Upstream, query: Query, raw: bytes) -> bytes:
        async with asyncio.timeout(self.timeout_s):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(TCP_LENGTH.pack(len(raw)) + raw)
                await writer.drain()
                (length,) = TCP_LENGTH.unpack(await reader.readexactly(TCP_LENGTH.size))
                reply = await reader.readexactly(length)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        if parse_header(reply).id != query.header.id:
            raise MalformedMessage("upstream TCP reply for another query")
        return reply
