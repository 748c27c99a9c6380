"""The Redfish power driver: ComputerSystem.Reset, PowerState and a one-time PXE boot override, over aiohttp.

Parameters: ``address``, ``port`` (443), ``scheme`` (https), ``username``, ``auth`` (``basic`` or ``session``:
an X-Auth-Token from the SessionService, deleted after the call), ``verify_tls`` (true; labs with self-signed
certificates set false), ``system_id`` (default: the first member of /redfish/v1/Systems), ``graceful_off``
(false: off is ForceOff; true: GracefulShutdown). Secret: ``password``.

HTTP 401/403 is Forbidden; no connection, a timeout or a 5xx is Unavailable (transient: retried with backoff);
any other refusal is BadRequest with the BMC's message. Passwords go only into the Authorization header or the
session request body, never into an error or a log line.
"""

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import structlog

from metalbus.contracts.errors import BadRequest, Forbidden, MetalbusError, Unavailable
from metalbus.contracts.power import PowerState
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.retry import RetryPolicy, with_retries

log = structlog.get_logger("metalbus.rack.power.redfish")

T = TypeVar("T")

SYSTEMS = "/redfish/v1/Systems"
SESSIONS = "/redfish/v1/SessionService/Sessions"
AUTH_MODES = ("basic", "session")


@dataclass(frozen=True)
class RedfishTarget:
    base_url: str
    username: str
    password: str = field(repr=False)
    auth: str
    verify_tls: bool
    system_id: str | None
    graceful_off: bool

    @classmethod
    def of(cls, bmc: Bmc) -> "RedfishTarget":
        scheme = bmc.text("scheme", "https")
        if scheme not in ("http", "https"):
            raise BadRequest("Redfish parameter 'scheme' must be http or https")
        auth = bmc.text("auth", "basic")
        if auth not in AUTH_MODES:
            raise BadRequest("Redfish parameter 'auth' must be basic or session")
        system_id = bmc.parameters.get("system_id")
        return cls(
            base_url=f"{scheme}://{bmc.address}:{bmc.integer('port', 443 if scheme == 'https' else 80)}",
            username=bmc.text("username", ""),
            password=bmc.password,
            auth=auth,
            verify_tls=bmc.flag("verify_tls", True),
            system_id=str(system_id) if system_id else None,
            graceful_off=bmc.flag("graceful_off", False),
        )


class RedfishCall:
    """One authenticated conversation with one BMC (basic auth, or a session opened and closed around it)."""

    def __init__(self, http: aiohttp.ClientSession, target: RedfishTarget) -> None:
        self._http = http
        self._target = target
        self._headers: dict[str, str] = {}

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = path if path.startswith("http") else f"{self._target.base_url}{path}"
        try:
            async with self._http.request(
                method,
                url,
                json=body,
                headers=self._headers,
                ssl=self._target.verify_tls,
            ) as response:
                payload = await _json_of(response)
                _raise_for(response.status, payload, self._target, f"{method} {path}")
                if response.status == 201 and "X-Auth-Token" in response.headers:
                    payload["@token"] = response.headers["X-Auth-Token"]
                    payload["@location"] = response.headers.get("Location", "")
                return payload
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError):
            raise BadRequest(
                f"BMC {self._target.base_url} presented a TLS certificate this rack does not trust"
                " (set verify_tls false for a self-signed one)"
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError):
            raise Unavailable(f"BMC {self._target.base_url} did not answer ({method} {path})") from None

    async def system_path(self) -> str:
        if self._target.system_id:
            return f"{SYSTEMS}/{self._target.system_id}"
        members = (await self.request("GET", SYSTEMS)).get("Members") or []
        if not members:
            raise BadRequest(f"BMC {self._target.base_url} lists no systems")
        return str(members[0]["@odata.id"]).rstrip("/")

    @asynccontextmanager
    async def authenticated(self) -> AsyncIterator["RedfishCall"]:
        if self._target.auth == "basic":
            self._headers = {"Authorization": basic_authorization(self._target.username, self._target.password)}
            yield self
            return
        created = await self.request(
            "POST", SESSIONS, {"UserName": self._target.username, "Password": self._target.password}
        )
        token = created.get("@token")
        if not token:
            raise BadRequest(f"BMC {self._target.base_url} opened no session (no X-Auth-Token)")
        self._headers = {"X-Auth-Token": str(token)}
        try:
            yield self
        finally:
            location = str(created.get("@location") or "")
            if location:
                try:
                    await self.request("DELETE", location)
                except MetalbusError as error:
                    log.info("redfish.session_not_closed", bmc=self._target.base_url, error=error.message)


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


async def _json_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        payload = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _raise_for(status: int, payload: dict[str, Any], target: RedfishTarget, what: str) -> None:
    if status < 400:
        return
    if status in (401, 403):
        raise Forbidden(f"BMC {target.base_url} refused the credentials")
    if status >= 500:
        raise Unavailable(f"BMC {target.base_url} failed {what} (HTTP {status})")
    message = str((payload.get("error") or {}).get("message") or f"HTTP {status}")[:300]
    raise BadRequest(f"BMC {target.base_url} refused {what}: {message}")


class RedfishDriver:
    """Power BMCs over Redfish; one instance per rack-power process (it owns the HTTP connection pool)."""

    def __init__(self, *, timeout_s: float, retry: RetryPolicy, max_connections: int = 64) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retry = retry
        self._max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    async def on(self, bmc: Bmc) -> None:
        await self._reset(bmc, lambda _: "On")

    async def off(self, bmc: Bmc) -> None:
        await self._reset(bmc, lambda target: "GracefulShutdown" if target.graceful_off else "ForceOff")

    async def cycle(self, bmc: Bmc) -> None:
        async def run(call: RedfishCall) -> None:
            system = await call.system_path()
            state = (await call.request("GET", system)).get("PowerState")
            reset_type = "ForceRestart" if state == "On" else "On"
            await call.request("POST", f"{system}/Actions/ComputerSystem.Reset", {"ResetType": reset_type})

        await self._run(bmc, run)

    async def query(self, bmc: Bmc) -> PowerState:
        async def run(call: RedfishCall) -> PowerState:
            state = (await call.request("GET", await call.system_path())).get("PowerState")
            return {"On": PowerState.ON, "Off": PowerState.OFF}.get(str(state), PowerState.UNKNOWN)

        return await self._run(bmc, run)

    async def set_boot_pxe(self, bmc: Bmc) -> None:
        async def run(call: RedfishCall) -> None:
            boot = {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}
            await call.request("PATCH", await call.system_path(), boot)

        await self._run(bmc, run)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _reset(self, bmc: Bmc, reset_type: Callable[[RedfishTarget], str]) -> None:
        async def run(call: RedfishCall) -> None:
            body = {"ResetType": reset_type(RedfishTarget.of(bmc))}
            await call.request("POST", f"{await call.system_path()}/Actions/ComputerSystem.Reset", body)

        await self._run(bmc, run)

    async def _run(self, bmc: Bmc, work: Callable[[RedfishCall], Awaitable[T]]) -> T:
        target = RedfishTarget.of(bmc)

        async def attempt() -> T:
            async with RedfishCall(self._session(), target).authenticated() as call:
                return await work(call)

        return await with_retries(attempt, self._retry)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._http = aiohttp.ClientSession(timeout=self._timeout, connector=connector)
        return self._http
