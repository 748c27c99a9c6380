"""The relay that gives a further rack's namespace the stack's NATS port on its own loopback
(``python -m metalbus.stack.namespace_relay``): bytes pass unchanged both ways, the end of a stream is passed on,
SIGTERM stops it."""

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from metalbus.netns import NetworkNamespace
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PAYLOAD = secrets.token_bytes(3 * 1024 * 1024 + 17)


@pytest.fixture
def namespace() -> Iterator[NetworkNamespace]:
    name = f"mbrelay{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield NetworkNamespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


StartRelay = Callable[[int, int], "subprocess.Popen[bytes]"]


@pytest.fixture
def start_relay(namespace: NetworkNamespace) -> Iterator[StartRelay]:
    """Starts the relay into ``namespace`` (inside port, host port); every relay started is stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(inside_port: int, host_port: int) -> subprocess.Popen[bytes]:
        relay = subprocess.Popen(
            [sys.executable, "-m", "metalbus.stack.namespace_relay", "--namespace", str(namespace.name),
             "--port", str(inside_port), "--to-port", str(host_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started.append(relay)
        return relay

    yield start
    for relay in started:
        if relay.poll() is None:
            relay.kill()
            relay.wait()


@contextlib.asynccontextmanager
async def echo_server(port: int) -> AsyncIterator[list[int]]:
    """Sends back what it reads, then closes after the client's end of stream; records the bytes per connection."""
    received: list[int] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while chunk := await reader.read(65536):
            total += len(chunk)
            writer.write(chunk)
            await writer.drain()
        received.append(total)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", port)
    async with server:
        yield received


async def connect_inside(namespace: NetworkNamespace, port: int, timeout_s: float = 10.0) -> socket.socket:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        client = namespace.open_socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            await loop.sock_connect(client, ("127.0.0.1", port))
            return client
        except ConnectionRefusedError:
            client.close()
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def round_trip(client: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()

    async def send() -> None:
        await loop.sock_sendall(client, PAYLOAD)
        client.shutdown(socket.SHUT_WR)

    sender = asyncio.create_task(send())
    answer = bytearray()
    while chunk := await asyncio.wait_for(loop.sock_recv(client, 65536), 10):
        answer += chunk
    await sender
    return bytes(answer)


async def test_a_connection_inside_the_namespace_reaches_the_host_port_and_back(
    namespace: NetworkNamespace, start_relay: StartRelay
) -> None:
    inside_port, host_port = free_port(), free_port()
    relay = start_relay(inside_port, host_port)
    async with echo_server(host_port) as received:
        clients = [await connect_inside(namespace, inside_port) for _ in range(3)]
        answers = await asyncio.gather(*(round_trip(client) for client in clients))
        for client in clients:
            client.close()
        assert all(answer == PAYLOAD for answer in answers)
        assert received == [len(PAYLOAD)] * 3  # each end of stream reached the server: it answered and closed
    relay.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(relay.wait, 10) == 0


async def test_the_relay_listens_only_inside_its_namespace(
    namespace: NetworkNamespace, start_relay: StartRelay
) -> None:
    inside_port = free_port()
    start_relay(inside_port, free_port())
    (await connect_inside(namespace, inside_port)).close()
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", inside_port), timeout=2):
        pass
