"""A small HTTP/1.1 client that speaks from a machine's own address (a socket made in the fleet's namespace).

One request per connection (``Connection: close``), as busybox wget does; the body is read by Content-Length,
chunked transfer coding, or to the end of the stream. Only ``http://`` URLs (the rack serves nothing else).
"""

import asyncio
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address
from urllib.parse import urlsplit

from metalbus.netns import NetworkNamespace

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 512 * 1024 * 1024
READ_SIZE = 256 * 1024


class HttpError(Exception):
    """No answer, or an answer that is not HTTP."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    """Empty when the caller did not keep it (``keep_body=False``); ``length`` counts it all the same."""
    length: int


async def http_request(
    namespace: NetworkNamespace,
    local_address: IPv4Address,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    timeout_s: float = 30.0,
    keep_body: bool = True,
) -> HttpResponse:
    """One request; a kernel or initrd is fetched with ``keep_body=False``: read to the end, counted, dropped."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise HttpError(f"not an http:// URL: {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    async with asyncio.timeout(timeout_s):
        reader, writer = await _connect(namespace, local_address, parts.hostname, parts.port or 80)
        try:
            writer.write(_request_bytes(method, target, parts.netloc, headers or {}, body))
            await writer.drain()
            return await _read_response(reader, keep_body)
        finally:
            writer.close()


async def _connect(
    namespace: NetworkNamespace, local_address: IPv4Address, host: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = namespace.open_socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((str(local_address), 0))
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError as error:
        sock.close()
        raise HttpError(f"cannot connect to {host}:{port} from {local_address}: {error}") from error
    return await asyncio.open_connection(sock=sock, limit=MAX_HEADER_BYTES)


def _request_bytes(method: str, target: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "User-Agent: metalbus-fleet", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, keep_body: bool) -> HttpResponse:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
        raise HttpError(f"no HTTP response head: {error}") from error
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    words = status_line.split(" ", 2)
    if len(words) < 2 or not words[0].startswith("HTTP/") or not words[1].isdigit():
        raise HttpError(f"not an HTTP status line: {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if not keep_body and "transfer-encoding" not in headers:
        return HttpResponse(int(words[1]), headers, b"", await _count_body(reader, headers.get("content-length")))
    body = await _read_body(reader, headers)
    return HttpResponse(int(words[1]), headers, body if keep_body else b"", len(body))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        if int(length) > MAX_BODY_BYTES:
            raise HttpError(f"body of {length} bytes is too large")
        return await reader.readexactly(int(length))
    return await reader.read(MAX_BODY_BYTES)


async def _count_body(reader: asyncio.StreamReader, length: str | None) -> int:
    """Read the body in pieces (a large initrd never sits in memory) and count it."""
    wanted = int(length) if length is not None and length.isdigit() else MAX_BODY_BYTES
    counted = 0
    while counted < wanted:
        piece = await reader.read(min(wanted - counted, READ_SIZE))
        if not piece:
            break
        counted += len(piece)
    return counted


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent to us
            return b"".join(chunks)
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError("chunked body too large")
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
