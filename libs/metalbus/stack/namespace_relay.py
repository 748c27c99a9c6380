"""A TCP port of this host made reachable on the loopback of a network namespace (``nats-relay@<rack>``).

A rack of the embedded stack that runs in a namespace of its own cannot reach the stack's NATS on the host's
127.0.0.1, and opening NATS beyond loopback would open it to whatever shares the host's networks. So the stack
relays: this process listens on ``127.0.0.1:<port>`` *inside* the namespace (the socket is made there) and joins
each connection to ``<host>:<port>`` of its own namespace, bytes passed on unchanged both ways (NATS's own
authentication still applies). ``python -m metalbus.stack.namespace_relay --namespace N --port P [--to-host H]``.
"""

import argparse
import asyncio
import contextlib
import signal
import socket

from metalbus.netns import NetworkNamespace

CHUNK = 256 * 1024
BACKLOG = 128


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on (half-close)."""
    try:
        while chunk := await reader.read(CHUNK):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def join(inside: tuple[asyncio.StreamReader, asyncio.StreamWriter], host: str, port: int) -> None:
    inside_reader, inside_writer = inside
    try:
        outside_reader, outside_writer = await asyncio.open_connection(host, port)
    except OSError:
        inside_writer.close()
        return
    try:
        await asyncio.gather(pipe(inside_reader, outside_writer), pipe(outside_reader, inside_writer))
    finally:
        for writer in (inside_writer, outside_writer):
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


def listening_socket(namespace: NetworkNamespace, port: int) -> socket.socket:
    listener = namespace.open_socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(BACKLOG)
    return listener


async def relay(namespace: str, port: int, to_host: str, to_port: int) -> None:
    listener = listening_socket(NetworkNamespace(namespace), port)

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await join((reader, writer), to_host, to_port)

    server = await asyncio.start_server(accepted, sock=listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"relaying 127.0.0.1:{port} in namespace {namespace} to {to_host}:{to_port}", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--port", type=int, required=True, help="the port inside the namespace, and by default outside")
    parser.add_argument("--to-host", default="127.0.0.1")
    parser.add_argument("--to-port", type=int, default=None)
    arguments = parser.parse_args()
    to_port = arguments.to_port if arguments.to_port is not None else arguments.port
    asyncio.run(relay(arguments.namespace, arguments.port, arguments.to_host, to_port))


if __name__ == "__main__":
    main()
