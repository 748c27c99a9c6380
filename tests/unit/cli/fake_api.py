"""A tiny in-memory stand-in for the metalbus HTTP API, served to the CLI through ``httpx.MockTransport``.

It answers the routes the CLI uses the way the spec says (bearer auth → 401, error envelope, 409 with
``current_status``), records every request it saw, and plays scripted SSE frames on ``/api/v1/events/stream``.
"""

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from metalbus.cli.session import CliEnvironment

GOOD_KEY = "mb_k3y1d000_AbCdEfGhIjKlMnOpQrStUvWx"
BASE_URL = "http://api.test:5240"
MACHINE = {
    "schema_version": 1,
    "system_id": "x7kq2m",
    "hostname": "node-1",
    "status": "new",
    "status_reason": None,
    "architecture": "amd64/bios",
    "boot_mac": "52:54:00:12:34:56",
    "power_type": "manual",
    "power_parameters": {},
    "bmc_address": None,
    "created_at": "2026-11-25T06:00:00Z",
    "status_changed_at": "2026-11-25T06:00:00Z",
    "commissioning_deadline": None,
}


def envelope(status: int, code: str, message: str, **extra: Any) -> httpx.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if status == 503:
        headers["Retry-After"] = "1"
    body = {"error": {"code": code, "message": message, "retryable": status in (503, 504), **extra}}
    return httpx.Response(status, json=body, headers=headers)


def sse_frame(sequence: int, kind: str, data: dict[str, Any]) -> bytes:
    return f"id: {sequence}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def frame_id(frame: bytes) -> int:
    found = re.search(rb"^id: (\d+)$", frame, re.MULTILINE)
    return int(found.group(1)) if found else 0


@dataclass
class FakeApi:
    machines: dict[str, dict[str, Any]] = field(default_factory=lambda: {"x7kq2m": dict(MACHINE)})
    stream_frames: list[bytes] = field(default_factory=list)
    stream_idle_after_frames: bool = False
    forced: dict[str, httpx.Response] = field(default_factory=dict)
    seen: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def environment(self, **environ: str) -> CliEnvironment:
        return CliEnvironment(environ=environ, transport=self.transport())

    def requests_to(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.seen if r.method == method and r.url.path == path]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if request.headers.get("authorization") != f"Bearer {GOOD_KEY}":
            return envelope(401, "unauthorized", "missing or invalid API key")
        forced = self.forced.get(f"{request.method} {request.url.path}")
        if forced is not None:
            return forced
        path, method = request.url.path, request.method
        if path == "/api/v1/machines":
            return self._create(request) if method == "POST" else self._list(request)
        if path == "/api/v1/events/stream":
            resume_after = int(request.headers.get("last-event-id", "0"))
            stream = FrameStream(self, resume_after)
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)
        if path == "/api/v1/events":
            return httpx.Response(200, json={"events": []})
        match = re.fullmatch(r"/api/v1/machines/([^/]+)(?:/([a-z-]+))?", path)
        if match:
            return self._machine_route(request, match.group(1), match.group(2))
        return envelope(404, "not_found", f"no route {path}")

    def _list(self, request: httpx.Request) -> httpx.Response:
        offset, limit = int(request.url.params.get("offset", 0)), int(request.url.params.get("limit", 100))
        items = sorted(self.machines.values(), key=lambda m: m["hostname"])
        return httpx.Response(
            200, json={"items": items[offset : offset + limit], "total": len(items), "offset": offset, "limit": limit}
        )

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        system_id = f"new{len(self.machines):03d}"
        machine = dict(MACHINE) | {
            "system_id": system_id,
            "hostname": body.get("hostname") or f"node-{system_id}",
            "boot_mac": body["boot_mac"],
            "power_type": body.get("power_type", "manual"),
            "power_parameters": body.get("power_parameters", {}),
            "bmc_address": body.get("power_parameters", {}).get("address"),
        }
        self.machines[system_id] = machine
        return httpx.Response(201, json=machine)

    def _machine_route(self, request: httpx.Request, system_id: str, action: str | None) -> httpx.Response:
        machine = self.machines.get(system_id)
        if machine is None:
            return envelope(404, "not_found", f"no machine {system_id}")
        if action is None and request.method == "DELETE":
            del self.machines[system_id]
            return httpx.Response(204)
        if action is None:
            return httpx.Response(200, json=machine)
        if action == "commission":
            if machine["status"] not in ("new", "ready", "failed_commissioning"):
                return envelope(
                    409, "invalid_transition", f"cannot commission a {machine['status']} machine",
                    current_status=machine["status"],
                )  # fmt: skip
            machine.update(status="commissioning", commissioning_deadline="2026-11-25T06:30:00Z")
            return httpx.Response(200, json=machine)
        if action == "power":
            return httpx.Response(200, json={"system_id": system_id, "state": "off"})
        return envelope(404, "not_found", f"no route {request.url.path}")


class FrameStream(httpx.SyncByteStream):
    """The scripted SSE frames after ``Last-Event-ID``, then the end of the response or a read timeout (idle)."""

    def __init__(self, api: FakeApi, resume_after: int) -> None:
        self._api = api
        self._resume_after = resume_after

    def __iter__(self) -> Iterator[bytes]:
        yield b": connected\n\n"
        for frame in self._api.stream_frames:
            if frame_id(frame) > self._resume_after:
                yield frame
        if self._api.stream_idle_after_frames:
            raise httpx.ReadTimeout("idle")
