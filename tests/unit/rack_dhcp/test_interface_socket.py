"""The interface socket tells the protocol when each datagram reached the host (the kernel's stamp)."""

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from metalbus_rack_dhcp.interface_socket import InterfaceSocket


@dataclass
class RecordingProtocol:
    received: list[tuple[bytes, float | None]] = field(default_factory=list)
    errors: list[Exception] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, int], received_at: float | None = None) -> None:
        self.received.append((data, received_at))
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        self.errors.append(exc)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    client.bind(("127.0.0.1", 0))
    yield server, client
    server.close()
    client.close()


async def until_received(protocol: RecordingProtocol, count: int) -> None:
    async with asyncio.timeout(2):
        while len(protocol.received) < count:
            protocol.arrived.clear()
            await protocol.arrived.wait()


async def test_each_datagram_arrives_stamped_with_how_long_it_waited_in_the_kernel(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    server, client = sockets
    protocol = RecordingProtocol()
    # The wall clock reads 3 s past the kernel's stamps: the datagrams waited 3 s before they were read.
    transport = InterfaceSocket(server, protocol, clock=lambda: 1000.0, wall_clock=lambda: time.time() + 3)
    transport.start()
    client.sendto(b"first", server.getsockname())
    client.sendto(b"second", server.getsockname())

    await until_received(protocol, 2)
    transport.close()

    assert [data for data, _ in protocol.received] == [b"first", b"second"]
    for _, received_at in protocol.received:
        assert received_at is not None and 996.9 < received_at < 997.1


async def test_replies_are_sent_from_the_served_socket_and_nothing_after_close(
    sockets: tuple[socket.socket, socket.socket],
) -> None:
    server, client = sockets
    served_address = server.getsockname()
    protocol = RecordingProtocol()
    transport = InterfaceSocket(server, protocol)
    transport.start()

    transport.sendto(b"reply", client.getsockname())
    transport.close()
    transport.sendto(b"late", client.getsockname())

    client.settimeout(1)
    assert client.recvfrom(100) == (b"reply", served_address)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recvfrom(100)
    assert transport.is_closing() and server.fileno() == -1 and protocol.errors == []
