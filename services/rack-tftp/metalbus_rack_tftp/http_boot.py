"""The rack's HTTP boot server (port 5248): files of one FileSource streamed over HTTP/1.1, with byte ranges.

Laid out like a MAAS rack: every path except ``/MAAS/…`` is a file of the source (per-machine boot configs at the
root such as ``/ipxe.cfg-52:54:00:12:34:56``, bootloaders, ``/images/…`` boot resources), handed to the source
percent-decoded, without the query and the leading ``/``; a ``..`` segment or a NUL byte is refused here (403)
before any source sees it. ``/MAAS`` and ``/MAAS/…`` (any method) go to an optional ASGI app (the metadata proxy
of rack-proxy) with ``root_path`` ``/MAAS`` and the full ``path``, as ASGI mounts do (its lifespan is not run);
without one they are 404.

Files are streamed in chunks read from ``OpenedFile.read`` in a worker thread, each chunk sent before the next is
read (uvicorn's flow control waits while the socket is full), so a squashfs of hundreds of MiB never sits in
memory; a client that vanishes stops the reading, one that takes nothing for ``stall_timeout`` is dropped.

``Range`` (RFC 9110 §14): one satisfiable range → 206 with ``Content-Range``; none satisfiable → 416 with
``Content-Range: bytes */size``; several ranges → the whole file (200, which RFC 9110 allows: a server may ignore
``Range``); a malformed header or any ``If-Range`` (no validators are sent) → the whole file. Refusals of the
source: NOT_FOUND → 404, ACCESS_VIOLATION → 403, UNAVAILABLE → 503 with ``Retry-After``.
"""

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import structlog
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metalbus_rack_tftp.sources import TRANSIENT_REFUSALS, FileRefused, FileSource, OpenedFile, RefusalReason, Requester
from metalbus_rack_tftp.transfer_reports import FinishedTransfer, TransferObserver

CHUNK_SIZE = 256 * 1024
METADATA_PREFIX = "/MAAS"
MAX_RANGES = 64
"""More ranges than this in one header is treated as malformed (ignored): a guard against range floods."""

log = structlog.get_logger("metalbus.rack_tftp.http")

# --- Range header (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WholeFile:
    """Send the whole file with 200: no Range, a malformed one, several ranges, or an If-Range."""


@dataclass(frozen=True)
class PartialContent:
    """Send bytes ``first``…``last`` (inclusive) with 206 and ``Content-Range: bytes first-last/size``."""

    first: int
    last: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True)
class RangeNotSatisfiable:
    """Send 416 with ``Content-Range: bytes */size``: every requested range starts at or past the end."""


RangeAnswer = WholeFile | PartialContent | RangeNotSatisfiable

_RANGE_SPEC = re.compile(r"(\d*)-(\d*)")


def _parse_range_spec(spec: str) -> tuple[int | None, int | None] | None:
    """``first-last``, ``first-`` or ``-suffix`` as (first, last) or (None, suffix); None when malformed."""
    match = _RANGE_SPEC.fullmatch(spec.strip(" \t"))
    if match is None or match.group(0) == "-":
        return None
    first_text, last_text = match.groups()
    if not first_text:
        return None, int(last_text)
    first, last = int(first_text), int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    return first, last


def _satisfiable_range(first: int | None, last: int | None, size: int) -> PartialContent | None:
    if first is None:
        suffix = last or 0
        if suffix == 0:
            return None
        return PartialContent(max(size - suffix, 0), size - 1)
    if first >= size:
        return None
    return PartialContent(first, size - 1 if last is None else min(last, size - 1))


def answer_range(range_header: str | None, size: int, *, if_range_present: bool = False) -> RangeAnswer:
    """What to send for a ``Range`` header on a file of ``size`` bytes (RFC 9110 §14.1 to §14.4)."""
    if range_header is None or if_range_present:
        return WholeFile()
    unit, separator, ranges = range_header.partition("=")
    if not separator or unit.lower() != "bytes":
        return WholeFile()
    specs = [spec for spec in ranges.split(",") if spec.strip(" \t")]
    if not specs or len(specs) > MAX_RANGES:
        return WholeFile()
    parsed = [_parse_range_spec(spec) for spec in specs]
    bounds = [bound for bound in parsed if bound is not None]
    if len(bounds) != len(parsed):
        return WholeFile()
    if size == 0:  # only a non-empty suffix is satisfiable, and 206 cannot say "no bytes": send the empty file
        return WholeFile() if any(first is None and last for first, last in bounds) else RangeNotSatisfiable()
    satisfiable = [answer for first, last in bounds if (answer := _satisfiable_range(first, last, size))]
    if not satisfiable:
        return RangeNotSatisfiable()
    if len(bounds) > 1:
        return WholeFile()
    return satisfiable[0]


def source_path(url_path: str) -> str:
    """The source's path for a percent-decoded URL path (query already gone): without its leading ``/``s.

    ``//images/x`` (a config that joined a base URL ending in ``/`` with an absolute path) is ``images/x``, so no
    URL can name an absolute path to the source.
    """
    return url_path.lstrip("/")


def is_traversal(path: str) -> bool:
    """A ``..`` segment or a NUL byte: refused here before any source sees it (the static root confines too)."""
    return "\x00" in path or ".." in path.replace("\\", "/").split("/")


# --- The ASGI app --------------------------------------------------------------------------------------------------


@dataclass
class HttpBootCounters:
    """What the HTTP boot server did since it started (exported as metrics by the service)."""

    requests: int = 0
    bytes_sent: int = 0
    full_responses: int = 0
    partial_responses: int = 0
    unsatisfiable_ranges: int = 0
    methods_not_allowed: int = 0
    metadata_requests: int = 0
    aborted_transfers: int = 0
    """Client gone mid-transfer, or the file failed or shrank under us."""
    stalled_transfers: int = 0
    """The client stopped taking bytes for longer than the stall timeout: the connection is dropped."""
    refusals: dict[RefusalReason, int] = field(default_factory=lambda: dict.fromkeys(RefusalReason, 0))


_REFUSAL_STATUS = {
    RefusalReason.NOT_FOUND: 404,
    RefusalReason.ACCESS_VIOLATION: 403,
    RefusalReason.UNAVAILABLE: 503,
    RefusalReason.REGION_SILENT: 503,
}


class TruncatedFile(Exception):
    """The file returned fewer bytes than its announced size: the connection is dropped, never padded."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _requester(scope: Scope) -> Requester:
    client = scope.get("client") or ("", 0)
    server = scope.get("server") or ("", 0)
    return Requester(str(client[0]), int(client[1]), str(server[0]), "http")


async def _send_status(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]], head: bool) -> None:
    body = f"{text}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


class HttpBootApp:
    """ASGI app: GET/HEAD of the source's files with ranges; ``/MAAS`` handed to ``metadata_app``."""

    def __init__(
        self,
        source: FileSource,
        *,
        metadata_app: ASGIApp | None = None,
        retry_after_seconds: int = 5,
        stall_timeout: float = 60.0,
        chunk_size: int = CHUNK_SIZE,
        counters: HttpBootCounters | None = None,
        on_transfer: TransferObserver | None = None,
    ) -> None:
        self._source = source
        self._on_transfer = on_transfer
        self._metadata_app = metadata_app
        self._retry_after = str(retry_after_seconds).encode()
        self._stall_timeout = stall_timeout
        self._chunk_size = chunk_size
        self.counters = counters or HttpBootCounters()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == METADATA_PREFIX or path.startswith(METADATA_PREFIX + "/"):
            await self._serve_metadata(scope, receive, send)
            return
        self.counters.requests += 1
        method: str = scope["method"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            self.counters.methods_not_allowed += 1
            await _send_status(send, 405, "method not allowed", [(b"allow", b"GET, HEAD")], head)
            return
        await self._serve_file(scope, receive, send, source_path(path), head)

    async def _serve_metadata(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.counters.metadata_requests += 1
        if self._metadata_app is None:
            await _send_status(send, 404, "not found", [], scope["method"] == "HEAD")
            return
        mounted = dict(scope, root_path=scope.get("root_path", "") + METADATA_PREFIX)
        await self._metadata_app(mounted, receive, send)

    async def _serve_file(self, scope: Scope, receive: Receive, send: Send, path: str, head: bool) -> None:
        requester = _requester(scope)
        try:
            if is_traversal(path):
                raise FileRefused(RefusalReason.ACCESS_VIOLATION, "traversal in path")
            opened = await self._source.open(path, requester)
        except FileRefused as refusal:
            await self._refuse(send, refusal, path, requester, head)
            return
        started = time.monotonic()
        with contextlib.closing(opened):
            answer = answer_range(
                _header(scope, b"range"), opened.size, if_range_present=_header(scope, b"if-range") is not None
            )
            completed = await self._answer(receive, send, opened, answer, head)
        if self._on_transfer is not None and not head and not isinstance(answer, RangeNotSatisfiable):
            size = answer.length if isinstance(answer, PartialContent) else opened.size
            duration_s = time.monotonic() - started
            self._on_transfer(FinishedTransfer("http", path, requester.client_address, size, completed, duration_s))

    async def _refuse(self, send: Send, refusal: FileRefused, path: str, requester: Requester, head: bool) -> None:
        self.counters.refusals[refusal.reason] += 1
        log_refusal = log.debug if refusal.reason is RefusalReason.NOT_FOUND else log.info
        log_refusal(
            "http_boot.refused",
            path=path,
            reason=refusal.reason.value,
            detail=refusal.message,
            client=requester.client_address,
        )
        extra = [(b"retry-after", self._retry_after)] if refusal.reason in TRANSIENT_REFUSALS else []
        await _send_status(send, _REFUSAL_STATUS[refusal.reason], refusal.reason.value, extra, head)

    async def _answer(self, receive: Receive, send: Send, opened: OpenedFile, answer: RangeAnswer, head: bool) -> bool:
        """Send the answer; True if every byte it promised went out."""
        size = opened.size
        common = [(b"accept-ranges", b"bytes")]
        if isinstance(answer, RangeNotSatisfiable):
            self.counters.unsatisfiable_ranges += 1
            extra = [*common, (b"content-range", f"bytes */{size}".encode())]
            await _send_status(send, 416, "range not satisfiable", extra, head)
            return True
        if isinstance(answer, PartialContent):
            self.counters.partial_responses += 1
            status, first, length = 206, answer.first, answer.length
            common.append((b"content-range", f"bytes {answer.first}-{answer.last}/{size}".encode()))
        else:
            self.counters.full_responses += 1
            status, first, length = 200, 0, size
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(length).encode()),
            *common,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if head:
            await send({"type": "http.response.body", "body": b""})
            return True
        return await self._stream(receive, send, opened, first, length)

    async def _stream(self, receive: Receive, send: Send, opened: OpenedFile, first: int, length: int) -> bool:
        """Send ``length`` bytes from ``first``, one chunk at a time; stop (False) when the client is gone or
        stalls."""
        client_gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, client_gone.set))
        try:
            offset, end = first, first + length
            while offset < end:
                if client_gone.is_set():
                    self.counters.aborted_transfers += 1
                    return False
                wanted = min(self._chunk_size, end - offset)
                try:
                    chunk = await asyncio.to_thread(opened.read, offset, wanted)
                except OSError:
                    self.counters.aborted_transfers += 1
                    raise
                if len(chunk) != wanted:
                    self.counters.aborted_transfers += 1
                    raise TruncatedFile(f"read {len(chunk)} of {wanted} bytes at offset {offset}")
                offset += wanted
                body: Message = {"type": "http.response.body", "body": chunk, "more_body": offset < end}
                try:  # send waits while the socket's buffer is full: that wait is the stall
                    await asyncio.wait_for(send(body), self._stall_timeout)
                except TimeoutError:
                    self.counters.stalled_transfers += 1
                    log.info("http_boot.stalled", offset=offset - wanted, timeout=self._stall_timeout)
                    return False
                self.counters.bytes_sent += wanted
            if length == 0:
                await send({"type": "http.response.body", "body": b""})
            return True
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _watch_disconnect(receive: Callable[[], Awaitable[Message]], on_disconnect: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        continue
    on_disconnect()


# --- Running it ----------------------------------------------------------------------------------------------------


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside a service's event loop: the service owns the signals, not uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpBootServer:
    """A running HTTP boot server: the port it listens on, its counters, and ``close()``."""

    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], listener: socket.socket, counters: HttpBootCounters
    ) -> None:
        self._server = server
        self._task = task
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self.counters = counters

    async def close(self) -> None:
        """Stop accepting; transfers in flight get the close timeout to end, then are cancelled."""
        self._server.should_exit = True
        grace = self._server.config.timeout_graceful_shutdown or 0.0
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace + 5.0)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._listener.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(512)
        listener.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


async def serve_http_boot(
    host: str,
    port: int,
    source: FileSource,
    metadata_app: ASGIApp | None = None,
    *,
    retry_after_seconds: int = 5,
    stall_timeout: float = 60.0,
    close_timeout: int = 10,
    startup_timeout: float = 10.0,
    on_transfer: TransferObserver | None = None,
) -> HttpBootServer:
    """Listen on ``host:port`` (0 = any free port; ``OSError`` if taken) and serve ``source`` until ``close()``.

    ``stall_timeout``: a client that takes no bytes for that long is dropped. ``close_timeout``: how long
    ``close()`` lets transfers in flight finish before cancelling them.
    """
    listener = _listening_socket(host, port)
    app = HttpBootApp(
        source,
        metadata_app=metadata_app,
        retry_after_seconds=retry_after_seconds,
        stall_timeout=stall_timeout,
        on_transfer=on_transfer,
    )
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        http="h11",
        ws="none",
        timeout_graceful_shutdown=close_timeout,
    )
    server = _EmbeddedUvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[listener]), name=f"http-boot-{host}:{port}")
    handle = HttpBootServer(server, task, listener, app.counters)
    try:
        await asyncio.wait_for(_started(server, task), startup_timeout)
    except BaseException:
        await handle.close()
        raise
    log.info("http_boot.listening", address=host, port=handle.port)
    return handle


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("HTTP boot server stopped during start-up")
        await asyncio.sleep(0.01)
