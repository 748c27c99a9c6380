"""The rack's metadata proxy: cloud-init's MAAS datasource URLs under ``/MAAS``, forwarded to the region over NATS.

Mounted by rack-tftp's HTTP server (port 5248) at ``/MAAS`` (``root_path`` ``/MAAS``, full ``path``). ``<ver>`` is
``2012-03-01`` or ``latest``; every route but the version list wants the machine's OAuth PLAINTEXT header:

- GET ``metadata/`` the versions; ``metadata/<ver>/`` and ``metadata/<ver>/meta-data/`` their indexes;
- GET ``metadata/<ver>/meta-data/{instance-id,local-hostname,public-keys,vendor-data}``, ``metadata/<ver>/user-data``
  → ``region.metadata.read``; ``metadata/<ver>/maas-commissioning-scripts`` a tar of the commissioning scripts
  (the user-data runner as ``commissioning.d/00-metalbus-commissioning``, 0755);
- POST ``metadata/<ver>/`` ``op=signal`` (multipart, see ``metadata_signal_form``) → ``region.metadata.signal``;
- POST ``metadata/status/<system_id>`` cloud-init's MAAS reporter (a JSON event per stage): checked to be the
  token's own machine (``region.metadata.read`` of its instance-id), then ``region.metadata.status``, which
  records it as an event on ``events.cloud-init.<system_id>``. Texts too long for the model are truncated here,
  never refused: a progress report is not worth failing a boot.

Answers: credentials missing, unreadable or unknown to the region → 401 (``WWW-Authenticate: OAuth``); the status
of another machine → 403; a body (signal or status event) over ``max_upload_bytes`` (or over NATS's payload limit)
→ 413; a malformed form → 400; no user-data → 404 (cloud-init reads that as "none"); a signal the machine's state
refuses → 409; the region away or slow → 503 with ``Retry-After`` (cloud-init and the runner retry).
"""

import io
import json
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import nats.errors
import structlog
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router
from starlette.types import Message, Receive, Scope, Send

from metalbus.bus import Bus
from metalbus.contracts.errors import (
    BadRequest,
    Forbidden,
    InvalidTransition,
    MetalbusError,
    NotFound,
    Timeout,
    Unavailable,
)
from metalbus.contracts.metadata import (
    MetadataItem,
    MetadataRead,
    MetadataSignal,
    MetadataStatusReport,
    MetadataValue,
    OAuthCredentials,
    SignalAck,
    StatusReportAck,
)
from metalbus.subjects import METADATA_READ, METADATA_SIGNAL, METADATA_STATUS
from metalbus_rack_proxy.metadata_counters import MetadataProxyCounters
from metalbus_rack_proxy.metadata_oauth import BadCredentials, credentials_from_header
from metalbus_rack_proxy.metadata_signal_form import BadForm, parse_form, signal_from_form

VERSIONS = ("2012-03-01", "latest")
META_DATA_ITEMS = (
    MetadataItem.INSTANCE_ID,
    MetadataItem.LOCAL_HOSTNAME,
    MetadataItem.PUBLIC_KEYS,
    MetadataItem.VENDOR_DATA,
)
COMMISSIONING_SCRIPT_PATH = "commissioning.d/00-metalbus-commissioning"
DEFAULT_MAX_UPLOAD_BYTES = 768 * 1024  # under NATS's default 1 MiB payload once wrapped in JSON

log = structlog.get_logger("metalbus.rack_proxy.metadata")


class MetadataRegion(Protocol):
    """Where the proxy's questions go: the region, over NATS (``BusMetadataRegion``)."""

    async def read(self, request: MetadataRead) -> MetadataValue: ...

    async def signal(self, signal: MetadataSignal) -> SignalAck: ...

    async def status_report(self, report: MetadataStatusReport) -> StatusReportAck: ...


class UploadTooLarge(Exception):
    """The body is larger than the proxy forwards: answered 413."""


class OtherMachine(Exception):
    """Valid credentials asking about another machine: answered 403."""


@dataclass
class BusMetadataRegion:
    """Typed requests on ``region.metadata.read`` / ``region.metadata.signal`` with bounded waits."""

    bus: Bus
    read_timeout_s: float = 5.0
    signal_timeout_s: float = 15.0

    async def read(self, request: MetadataRead) -> MetadataValue:
        return await self.bus.request(METADATA_READ, request, timeout=self.read_timeout_s)

    async def signal(self, signal: MetadataSignal) -> SignalAck:
        try:
            return await self.bus.request(METADATA_SIGNAL, signal, timeout=self.signal_timeout_s)
        except nats.errors.MaxPayloadError as error:
            raise UploadTooLarge(f"signal exceeds the NATS payload limit: {error}") from error

    async def status_report(self, report: MetadataStatusReport) -> StatusReportAck:
        return await self.bus.request(METADATA_STATUS, report, timeout=self.read_timeout_s)


Handler = Callable[[Request], Awaitable[Response]]


class MetadataApp:
    """The ASGI app rack-tftp's HTTP server mounts at ``/MAAS``; ``counters`` say what it did."""

    def __init__(
        self,
        region: MetadataRegion,
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        retry_after_seconds: int = 5,
        counters: MetadataProxyCounters | None = None,
    ) -> None:
        self._region = region
        self._max_upload = max_upload_bytes
        self._retry_after = str(retry_after_seconds)
        self.counters = counters or MetadataProxyCounters()
        self._router = Router(
            routes=[
                Route("/metadata/", self._guarded("versions", self._versions), methods=["GET"]),
                Route("/metadata/status/{system_id}", self._guarded("status", self._status), methods=["POST"]),
                Route("/metadata/{version}/", self._guarded("index", self._index), methods=["GET", "POST"]),
                Route("/metadata/{version}/meta-data/", self._guarded("meta-data/", self._items), methods=["GET"]),
                Route(
                    "/metadata/{version}/meta-data/{item}",
                    self._guarded("meta-data/{item}", self._meta_data),
                    methods=["GET"],
                ),
                Route("/metadata/{version}/user-data", self._guarded("user-data", self._user_data), methods=["GET"]),
                Route(
                    "/metadata/{version}/maas-commissioning-scripts",
                    self._guarded("maas-commissioning-scripts", self._commissioning_scripts),
                    methods=["GET"],
                ),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counters.responses_by_status[int(message["status"])] += 1
            await send(message)

        try:
            await self._router(scope, receive, counting_send)
        finally:
            self.counters.latency.observe(time.perf_counter() - started)

    # -- routes ---------------------------------------------------------------------------------------------------

    async def _versions(self, _: Request) -> Response:
        return _text("\n".join(VERSIONS) + "\n")

    async def _index(self, request: Request) -> Response:
        _version(request)
        credentials = credentials_from_header(request.headers.get("authorization"))
        if request.method == "POST":
            return await self._signal(request, credentials)
        await self._region.read(MetadataRead(credentials=credentials, item=MetadataItem.INSTANCE_ID))
        return _text("meta-data/\nuser-data\nmaas-commissioning-scripts\n")

    async def _items(self, request: Request) -> Response:
        _version(request)
        credentials = credentials_from_header(request.headers.get("authorization"))
        await self._region.read(MetadataRead(credentials=credentials, item=MetadataItem.INSTANCE_ID))
        return _text("".join(f"{item.value}\n" for item in META_DATA_ITEMS))

    async def _meta_data(self, request: Request) -> Response:
        _version(request)
        item = _meta_data_item(request.path_params["item"])
        value = await self._read(request, item)
        return _text(value.content)

    async def _user_data(self, request: Request) -> Response:
        _version(request)
        value = await self._read(request, MetadataItem.USER_DATA)
        return Response(value.content.encode(), media_type="application/octet-stream")

    async def _commissioning_scripts(self, request: Request) -> Response:
        _version(request)
        value = await self._read(request, MetadataItem.USER_DATA)
        return Response(commissioning_scripts_tar(value.content), media_type="application/x-tar")

    async def _signal(self, request: Request, credentials: OAuthCredentials) -> Response:
        body = await self._body(request, self._max_upload)
        signal = signal_from_form(credentials, parse_form(request.headers.get("content-type"), body))
        ack = await self._region.signal(signal)
        self.counters.signals_forwarded += 1
        log.info("metadata.signal", system_id=ack.system_id, status=signal.status.value, results=len(signal.results))
        return _text("OK")

    async def _status(self, request: Request) -> Response:
        system_id = request.path_params["system_id"]
        value = await self._read(request, MetadataItem.INSTANCE_ID)
        if value.content != system_id:
            raise OtherMachine(f"the credentials belong to machine {value.content}, not {system_id}")
        event = _status_event(await self._body(request, self._max_upload))
        credentials = credentials_from_header(request.headers.get("authorization"))
        await self._region.status_report(status_report(credentials, system_id, event))
        self.counters.cloud_init_events += 1
        return _text("OK")

    # -- shared steps ---------------------------------------------------------------------------------------------

    async def _read(self, request: Request, item: MetadataItem) -> MetadataValue:
        credentials = credentials_from_header(request.headers.get("authorization"))
        return await self._region.read(MetadataRead(credentials=credentials, item=item))

    async def _body(self, request: Request, limit: int) -> bytes:
        """The whole body, or UploadTooLarge as soon as it is known to exceed ``limit`` bytes."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise UploadTooLarge(f"body of {declared} bytes exceeds {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise UploadTooLarge(f"body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _guarded(self, route: str, handler: Handler) -> Handler:
        """Count the route and turn every refusal into its HTTP answer."""

        async def answer(request: Request) -> Response:
            self.counters.requests_by_route[route] += 1
            try:
                return await handler(request)
            except BadCredentials as error:
                return self._unauthenticated(str(error))
            except BadForm as error:
                return _text(f"bad request: {error}", 400)
            except OtherMachine as error:
                log.info("metadata.other_machine", route=route, reason=str(error))
                return _text(f"forbidden: {error}", 403)
            except UploadTooLarge as error:
                self.counters.uploads_refused += 1
                return _text(f"upload too large: {error}", 413)
            except MetalbusError as error:
                return self._region_refusal(route, error)

        return answer

    def _region_refusal(self, route: str, error: MetalbusError) -> Response:
        self.counters.region_failures_by_code[error.code.value] += 1
        if isinstance(error, Forbidden):  # the region's one refusal on these subjects: credentials it does not take
            return self._unauthenticated(error.message)
        if isinstance(error, (Unavailable, Timeout)):
            log.warning("metadata.region_unavailable", route=route, error=error.message)
            return _text("the region is not answering, try again", 503, {"retry-after": self._retry_after})
        if isinstance(error, (NotFound, InvalidTransition, BadRequest)):
            return _text(error.message, error.http_status)
        log.error("metadata.region_failed", route=route, code=error.code.value, error=error.message)
        return _text("internal error", 500)

    def _unauthenticated(self, reason: str) -> Response:
        self.counters.unauthenticated += 1
        log.info("metadata.unauthenticated", reason=reason)
        return _text("authorization required", 401, {"www-authenticate": 'OAuth realm="OAuth"'})


def _text(content: str, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(content, status_code=status, headers=headers)


def _version(request: Request) -> None:
    if request.path_params["version"] not in VERSIONS:
        raise NotFound(f"unknown metadata version {request.path_params['version'][:40]!r}")


def _meta_data_item(name: str) -> MetadataItem:
    for item in META_DATA_ITEMS:
        if item.value == name:
            return item
    raise NotFound(f"no meta-data item {name[:40]!r}")


def _status_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body)
    except ValueError as error:
        raise BadForm(f"status event is not JSON: {error}") from error
    if not isinstance(event, dict):
        raise BadForm("status event is not a JSON object")
    return event


def status_report(credentials: OAuthCredentials, system_id: str, event: dict[str, Any]) -> MetadataStatusReport:
    """The report of one cloud-init event: texts cut to the model's bounds, a bad timestamp left out."""
    result = event.get("result")
    return MetadataStatusReport(
        credentials=credentials,
        system_id=system_id,
        event_type=str(event.get("event_type") or "unknown")[:40],
        origin=str(event.get("origin") or "")[:40],
        name=str(event.get("name") or "")[:255],
        description=str(event.get("description") or "")[:2000],
        result=None if result is None else str(result)[:40],
        timestamp=_epoch_seconds(event.get("timestamp")),
    )


def _epoch_seconds(value: object) -> float | None:
    """A plausible timestamp (a number between 1970 and the year 9999), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 2.5e11 else None


def commissioning_scripts_tar(runner: str) -> bytes:
    """An uncompressed tar holding the commissioning runner, executable, where MAAS keeps commissioning scripts."""
    content = runner.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        entry = tarfile.TarInfo(COMMISSIONING_SCRIPT_PATH)
        entry.size, entry.mode, entry.mtime = len(content), 0o755, int(time.time())
        archive.addfile(entry, io.BytesIO(content))
    return buffer.getvalue()
