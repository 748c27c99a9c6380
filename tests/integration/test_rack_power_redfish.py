"""The Redfish driver against sushy-tools' emulator (fake driver) on loopback: power on/off and state, the PXE
boot override, the system chosen by ``system_id``, basic and session auth, refused credentials, TLS checks.

sushy-tools applies a power change 1-11 s after the request (like real hardware), so state is awaited. It has no
SessionService: session auth is tested through a small gateway in front of it that issues X-Auth-Tokens and
forwards requests with basic auth, counting the sessions opened and closed.
"""

import asyncio
import secrets
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from metalbus.contracts.errors import BadRequest, Forbidden, Unavailable
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerState
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.redfish import RedfishDriver, basic_authorization
from metalbus_rack_power.retry import RetryPolicy
from tests.conftest import free_port

PASSWORD = "redfish-Pa55word-e41d"
SUSHY = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "sushy-emulator")
POWER_SETTLES_S = 15  # sushy-tools applies a power change after up to 11 s


@dataclass
class Sushy:
    port: int
    systems: list[str]
    scheme: str = "http"
    process: "subprocess.Popen[bytes] | None" = field(default=None, repr=False)

    def bmc(self, password: str = PASSWORD, **parameters: Any) -> Bmc:
        base = {"address": "127.0.0.1", "port": self.port, "scheme": self.scheme, "username": "admin"}
        return Bmc(PowerType.REDFISH, {**base, **parameters}, {"password": password})


def start_sushy(root: Path, *, tls: bool = False) -> Sushy:
    root.mkdir(parents=True, exist_ok=True)
    systems = [str(uuid.uuid4()) for _ in range(2)]
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (root / "htpasswd").write_text(f"admin:{hashed}\n")
    fake = [
        {"uuid": system, "name": f"node-{index}", "power_state": "Off", "external_notifier": False, "nics": []}
        for index, system in enumerate(systems)
    ]
    config = [
        "SUSHY_EMULATOR_FAKE_DRIVER = True",
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {fake!r}",
        f"SUSHY_EMULATOR_AUTH_FILE = {str(root / 'htpasswd')!r}",
        f"SUSHY_EMULATOR_STATE_DIR = {str(root / 'state')!r}",
    ]
    if tls:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
             "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        config += [f"SUSHY_EMULATOR_SSL_CERT = {str(root / 'cert.pem')!r}"]
        config += [f"SUSHY_EMULATOR_SSL_KEY = {str(root / 'key.pem')!r}"]
    (root / "sushy.conf").write_text("\n".join(config) + "\n")
    sushy = Sushy(port=free_port(), systems=systems, scheme="https" if tls else "http")
    sushy.process = subprocess.Popen(
        [SUSHY, "--config", str(root / "sushy.conf"), "-i", "127.0.0.1", "-p", str(sushy.port)],
        stdout=(root / "sushy.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    return sushy


def stop_sushy(sushy: Sushy) -> None:
    if sushy.process is not None and sushy.process.poll() is None:
        sushy.process.terminate()
        try:
            sushy.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sushy.process.kill()
            sushy.process.wait(timeout=5)


async def wait_listening(port: int, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        return
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
async def sushy(tmp_path: Path) -> AsyncIterator[Sushy]:
    emulator = start_sushy(tmp_path / "sushy")
    try:
        await wait_listening(emulator.port)
        yield emulator
    finally:
        stop_sushy(emulator)


@pytest.fixture
async def driver() -> AsyncIterator[RedfishDriver]:
    redfish = RedfishDriver(timeout_s=5, retry=RetryPolicy(retries=0))
    yield redfish
    await redfish.close()


async def settled(driver: RedfishDriver, bmc: Bmc, expected: PowerState) -> PowerState:
    deadline = time.monotonic() + POWER_SETTLES_S
    state = await driver.query(bmc)
    while state is not expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        state = await driver.query(bmc)
    return state


async def system_document(sushy: Sushy, system: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(headers={"Authorization": basic_authorization("admin", PASSWORD)}) as http,
        http.get(f"http://127.0.0.1:{sushy.port}/redfish/v1/Systems/{system}") as response,
    ):
        document: dict[str, Any] = await response.json()
        return document


async def test_power_on_then_off_with_basic_auth(sushy: Sushy, driver: RedfishDriver) -> None:
    bmc = sushy.bmc()  # no system_id: the first member of /redfish/v1/Systems
    assert await driver.query(bmc) is PowerState.OFF
    await driver.on(bmc)
    assert await settled(driver, bmc, PowerState.ON) is PowerState.ON
    first = (await system_document(sushy, sushy.systems[0]))["PowerState"]
    second = (await system_document(sushy, sushy.systems[1]))["PowerState"]
    assert {first, second} == {"On", "Off"}, "exactly one system (the first listed) was powered"
    await driver.off(bmc)
    assert await settled(driver, bmc, PowerState.OFF) is PowerState.OFF


async def test_system_id_picks_the_system_and_boot_override_is_pxe(sushy: Sushy, driver: RedfishDriver) -> None:
    target = sushy.systems[1]
    await driver.set_boot_pxe(sushy.bmc(system_id=target))
    assert (await system_document(sushy, target))["Boot"]["BootSourceOverrideTarget"] == "Pxe"
    # sushy-tools reports BootSourceOverrideEnabled "Continuous" whatever was asked; we send "Once".
    await driver.cycle(sushy.bmc(system_id=target))  # off: cycle powers it on
    assert await settled(driver, sushy.bmc(system_id=target), PowerState.ON) is PowerState.ON
    with pytest.raises(BadRequest, match="refused GET"):
        await driver.query(sushy.bmc(system_id="no-such-system"))


async def test_wrong_password_is_forbidden_and_never_echoed(sushy: Sushy, driver: RedfishDriver) -> None:
    wrong = "wrong-Pa55word-0c9a"
    with pytest.raises(Forbidden) as refused:
        await driver.on(sushy.bmc(password=wrong))
    assert refused.value.message == f"BMC http://127.0.0.1:{sushy.port} refused the credentials"
    assert wrong not in repr(refused.value) and PASSWORD not in repr(refused.value)


async def test_a_port_where_no_bmc_listens_is_unavailable(driver: RedfishDriver) -> None:
    bmc = Bmc(PowerType.REDFISH, {"address": "127.0.0.1", "port": free_port(), "scheme": "http"}, {"password": "x"})
    with pytest.raises(Unavailable, match="did not answer"):
        await driver.query(bmc)


async def test_self_signed_certificate_is_refused_unless_verify_tls_is_false(
    tmp_path: Path, driver: RedfishDriver
) -> None:
    emulator = start_sushy(tmp_path / "tls", tls=True)
    try:
        await wait_listening(emulator.port)
        with pytest.raises(BadRequest, match="TLS certificate this rack does not trust"):
            await driver.query(emulator.bmc())
        assert await driver.query(emulator.bmc(verify_tls=False)) is PowerState.OFF
    finally:
        stop_sushy(emulator)


@dataclass
class SessionGateway:
    """A Redfish SessionService in front of sushy-tools: tokens in, basic auth out."""

    upstream: str
    tokens: set[str] = field(default_factory=set)
    opened: int = 0
    closed: int = 0
    refused: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/redfish/v1/SessionService/Sessions", self.open_session)
        app.router.add_delete("/redfish/v1/SessionService/Sessions/{token}", self.close_session)
        app.router.add_route("*", "/{path:.*}", self.forward)
        return app

    async def open_session(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body != {"UserName": "admin", "Password": PASSWORD}:
            return web.json_response({"error": {"message": "bad credentials"}}, status=401)
        token = secrets.token_hex(8)
        self.tokens.add(token)
        self.opened += 1
        location = f"/redfish/v1/SessionService/Sessions/{token}"
        return web.json_response({"Id": token}, status=201, headers={"X-Auth-Token": token, "Location": location})

    async def close_session(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if request.headers.get("X-Auth-Token") != token or token not in self.tokens:
            return web.json_response({"error": {"message": "no such session"}}, status=401)
        self.tokens.discard(token)
        self.closed += 1
        return web.Response(status=204)

    async def forward(self, request: web.Request) -> web.Response:
        if request.headers.get("X-Auth-Token") not in self.tokens or "Authorization" in request.headers:
            self.refused += 1
            return web.json_response({"error": {"message": "session required"}}, status=401)
        async with (
            aiohttp.ClientSession(headers={"Authorization": basic_authorization("admin", PASSWORD)}) as http,
            http.request(request.method, f"{self.upstream}{request.path}", data=await request.read(),
                         headers={"Content-Type": request.content_type}) as answer,
        ):  # fmt: skip
            return web.Response(status=answer.status, body=await answer.read(), content_type="application/json")


@pytest.fixture
async def gateway(sushy: Sushy) -> AsyncIterator[tuple[SessionGateway, int]]:
    front = SessionGateway(upstream=f"http://127.0.0.1:{sushy.port}")
    runner = web.AppRunner(front.app())
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield front, port
    finally:
        await runner.cleanup()


async def test_session_auth_opens_uses_and_closes_a_session(
    gateway: tuple[SessionGateway, int], driver: RedfishDriver
) -> None:
    front, port = gateway
    bmc = Bmc(
        PowerType.REDFISH,
        {"address": "127.0.0.1", "port": port, "scheme": "http", "username": "admin", "auth": "session"},
        {"password": PASSWORD},
    )
    assert await driver.query(bmc) is PowerState.OFF
    await driver.set_boot_pxe(bmc)
    assert (front.opened, front.closed, front.refused, front.tokens) == (2, 2, 0, set())
    wrong = Bmc(PowerType.REDFISH, {**bmc.parameters}, {"password": "wrong"})
    with pytest.raises(Forbidden):
        await driver.query(wrong)
    assert front.opened == 2
