"""A small typed client of the metalbus HTTP API (``/api/v1``): one method per route, typed errors, SSE events.

Replies are returned as the API's JSON, unchanged, so ``--json`` prints exactly what the API said. A reply that is
not 2xx becomes :class:`ApiError` (status, error code, message, extra fields of the error envelope); a request that
never got an answer becomes :class:`ApiUnreachable`.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import httpx

from metalbus.cli.sse import ServerSentEvent, SseDecoder, decode_lines

JsonObject = dict[str, Any]
DEFAULT_TIMEOUT_S = 30.0
POWER_TIMEOUT_S = 90.0  # the region may try several racks, each talking to a BMC
USER_AGENT = "metalbus-cli"


class ApiUnreachable(Exception):
    """No answer at all: connection refused, DNS, TLS, a timeout, a stream cut off."""


class StreamIdle(Exception):
    """The event stream sent nothing (not even a keep-alive) for the read timeout."""


@dataclass(eq=False)
class ApiError(Exception):
    """A non-2xx answer, with the fields of the API's error envelope."""

    status: int
    code: str
    message: str
    retryable: bool = False
    details: JsonObject = field(default_factory=dict)
    retry_after: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def describe_validation_detail(detail: Any) -> str:
    """FastAPI's ``{"detail": [{"loc": [...], "msg": ...}]}`` → ``body.boot_mac: not a MAC address``."""
    if isinstance(detail, list):
        problems = []
        for item in detail:
            if isinstance(item, dict):
                location = ".".join(str(part) for part in item.get("loc", []))
                problems.append(f"{location}: {item.get('msg', '')}" if location else str(item.get("msg", "")))
        return "; ".join(problems) or "invalid request"
    return str(detail)


def error_from_response(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = None
    retry_after = response.headers.get("retry-after")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        envelope = body["error"]
        extras = {key: value for key, value in envelope.items() if key not in ("code", "message", "retryable")}
        if isinstance(envelope.get("detail"), list | dict):
            extras.setdefault("detail", envelope["detail"])
        return ApiError(
            status=response.status_code,
            code=str(envelope.get("code", "")),
            message=str(envelope.get("message", "")),
            retryable=bool(envelope.get("retryable", False)),
            details=extras,
            retry_after=retry_after,
        )
    if isinstance(body, dict) and "detail" in body:
        code = "validation" if response.status_code == 422 else ""
        return ApiError(response.status_code, code, describe_validation_detail(body["detail"]), retry_after=retry_after)
    text = response.text.strip()[:200] if response.text else response.reason_phrase
    return ApiError(response.status_code, "", text, retry_after=retry_after)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


class EventStream:
    """An open ``/api/v1/events/stream`` response; ``events()`` yields events as they arrive."""

    def __init__(self, response: httpx.Response, decoder: SseDecoder) -> None:
        self._response = response
        self.decoder = decoder

    def events(self) -> Iterator[ServerSentEvent]:
        try:
            yield from decode_lines(self._response.iter_lines(), self.decoder)
        except httpx.ReadTimeout as error:
            raise StreamIdle("no event or keep-alive within the read timeout") from error
        except httpx.TransportError as error:
            raise ApiUnreachable(f"event stream interrupted: {error}") from error


class MetalbusApi:
    """Synchronous client; pass ``transport`` (e.g. ``httpx.MockTransport``) to talk to a fake."""

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self._http = httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            timeout=timeout_s,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One request; the decoded JSON reply (None for an empty one), or ApiError / ApiUnreachable."""
        extra: dict[str, Any] = {} if timeout_s is None else {"timeout": timeout_s}
        try:
            response = self._http.request(method, path, params=_without_none(params or {}), json=body, **extra)
        except httpx.TransportError as error:
            raise ApiUnreachable(f"cannot reach the API at {self.url}: {error or type(error).__name__}") from error
        if not response.is_success:
            raise error_from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            raise ApiUnreachable(f"the API at {self.url} answered {path} with something that is not JSON") from error

    # -- machines ---------------------------------------------------------------------------------------------
    def list_machines(
        self,
        *,
        status: str | None = None,
        hostname: str | None = None,
        architecture: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> JsonObject:
        params = {"status": status, "hostname": hostname, "architecture": architecture}
        result: JsonObject = self.call("GET", "/api/v1/machines", params=params | {"offset": offset, "limit": limit})
        return result

    def get_machine(self, system_id: str) -> JsonObject:
        result: JsonObject = self.call("GET", f"/api/v1/machines/{_segment(system_id)}")
        return result

    def create_machine(self, body: JsonObject) -> JsonObject:
        result: JsonObject = self.call("POST", "/api/v1/machines", body=body)
        return result

    def delete_machine(self, system_id: str) -> None:
        self.call("DELETE", f"/api/v1/machines/{_segment(system_id)}")

    def commission(self, system_id: str, *, timeout_s: float | None = None) -> JsonObject:
        body = _without_none({"timeout_s": timeout_s})
        result: JsonObject = self.call("POST", f"/api/v1/machines/{_segment(system_id)}/commission", body=body)
        return result

    def machine_action(self, system_id: str, action: str, *, reason: str | None = None) -> JsonObject:
        """``abort``, ``mark-broken`` or ``mark-fixed``."""
        path = f"/api/v1/machines/{_segment(system_id)}/{action}"
        result: JsonObject = self.call("POST", path, body=_without_none({"reason": reason}))
        return result

    def power(self, system_id: str, action: str) -> JsonObject:
        path = f"/api/v1/machines/{_segment(system_id)}/power"
        result: JsonObject = self.call("POST", path, body={"action": action}, timeout_s=POWER_TIMEOUT_S)
        return result

    def inventory(self, system_id: str) -> JsonObject:
        result: JsonObject = self.call("GET", f"/api/v1/machines/{_segment(system_id)}/inventory")
        return result

    def results(self, system_id: str) -> list[JsonObject]:
        result: list[JsonObject] = self.call("GET", f"/api/v1/machines/{_segment(system_id)}/results")
        return result

    # -- subnets, racks, leases -------------------------------------------------------------------------------
    def list_subnets(self) -> list[JsonObject]:
        result: list[JsonObject] = self.call("GET", "/api/v1/subnets")
        return result

    def create_subnet(self, body: JsonObject) -> JsonObject:
        result: JsonObject = self.call("POST", "/api/v1/subnets", body=body)
        return result

    def update_subnet(self, subnet_id: int, body: JsonObject) -> JsonObject:
        result: JsonObject = self.call("PATCH", f"/api/v1/subnets/{subnet_id}", body=body)
        return result

    def list_racks(self) -> list[JsonObject]:
        result: list[JsonObject] = self.call("GET", "/api/v1/racks")
        return result

    def list_leases(
        self, *, subnet_id: int | None = None, mac: str | None = None, active_only: bool = True
    ) -> list[JsonObject]:
        params = {"subnet_id": subnet_id, "mac": mac, "active_only": str(active_only).lower()}
        result: list[JsonObject] = self.call("GET", "/api/v1/leases", params=params)
        return result

    # -- events -----------------------------------------------------------------------------------------------
    def list_events(
        self, *, after: int | None = None, limit: int = 100, kind: str | None = None, object_id: str | None = None
    ) -> JsonObject:
        params = {"after": after, "limit": limit, "kind": kind, "id": object_id}
        result: JsonObject = self.call("GET", "/api/v1/events", params=params)
        return result

    @contextmanager
    def event_stream(
        self,
        *,
        kind: str | None = None,
        object_id: str | None = None,
        last_event_id: str | None = None,
        read_timeout_s: float | None = None,
    ) -> Iterator[EventStream]:
        """Open the SSE stream (the response headers have arrived when this yields); resume after
        ``last_event_id`` if given. ``read_timeout_s`` None waits for ever."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=read_timeout_s)
        params = _without_none({"kind": kind, "id": object_id})
        try:
            with self._http.stream(
                "GET", "/api/v1/events/stream", params=params, headers=headers, timeout=timeout
            ) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield EventStream(response, SseDecoder(last_event_id=last_event_id))
        except httpx.ReadTimeout as error:
            raise StreamIdle("no answer from the event stream within the read timeout") from error
        except httpx.TransportError as error:
            raise ApiUnreachable(f"cannot reach the API at {self.url}: {error or type(error).__name__}") from error
