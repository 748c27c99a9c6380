"""The `metalbus` CLI as an operator runs it: a real region, a real api process, the CLI as a subprocess."""

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from metalbus.bus import Bus
from metalbus.contracts.apikeys import ApiKeyCreate
from metalbus.subjects import API_KEY_CREATE
from tests.conftest import NatsServer, free_port
from tests.integration.test_region import eventually, running_region

CLI_TIMEOUT_S = 30.0
API_READY_S = 20.0


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Operator:
    """Runs `python -m metalbus.cli.main …` with its own config directory and chosen environment."""

    config_home: Path
    api_url: str

    async def run(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        environ = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.config_home),
            "XDG_CONFIG_HOME": str(self.config_home),
            "COLUMNS": "200",
        } | (env or {})
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metalbus.cli.main", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
        assert process.returncode is not None
        return CliResult(process.returncode, stdout.decode(), stderr.decode())


async def wait_for_http(port: int, deadline_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"the api did not listen on {port} within {deadline_s}s") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


@asynccontextmanager
async def api_process(nats: NatsServer, log_path: Path) -> AsyncIterator[str]:
    """`python -m metalbus_api` on a free loopback port; stopped (TERM, then KILL) by its pid on the way out."""
    port = free_port()
    env = os.environ | {
        "METALBUS_API_NATS_URL": nats.url,
        "METALBUS_API_HOST": "127.0.0.1",
        "METALBUS_API_PORT": str(port),
        "METALBUS_API_LOG_LEVEL": "warning",
    }
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "metalbus_api", stdout=log, stderr=log, env=env
        )
    try:
        await wait_for_http(port, API_READY_S)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


@asynccontextmanager
async def operator_setup(nats: NatsServer, dsn: str, tmp_path: Path) -> AsyncIterator[tuple[Operator, str]]:
    """A region (reaper every 0.2 s), the api, and an API key made over the bus: (operator, key)."""
    bus = await Bus.connect(nats.options("cli-test"))
    try:
        async with (
            running_region(nats, dsn, "r1", reaper_interval_s=0.2),
            api_process(nats, tmp_path / "api.log") as url,
        ):
            created = await eventually(
                lambda: bus.request(API_KEY_CREATE, ApiKeyCreate(name="cli-test"), timeout=2), lambda c: True
            )
            yield Operator(config_home=tmp_path / "home", api_url=url), created.key
    finally:
        await bus.close()


async def test_an_operator_logs_in_adds_lists_and_shows_a_machine(
    nats_server: NatsServer, database_dsn: str, tmp_path: Path
) -> None:
    async with operator_setup(nats_server, database_dsn, tmp_path) as (operator, key):
        login = await operator.run("login", "lab", operator.api_url, key)
        assert login.code == 0, login.stderr
        config = operator.config_home / "metalbus" / "cli.toml"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600

        added = await operator.run("machines", "add", "--mac", "52:54:00:c1:00:01", "--hostname", "cli-1", "--json")
        assert added.code == 0, added.stderr
        machine = json.loads(added.stdout)
        assert (machine["hostname"], machine["status"], machine["boot_mac"]) == ("cli-1", "new", "52:54:00:c1:00:01")
        system_id = machine["system_id"]

        listed = json.loads((await operator.run("machines", "list", "--json")).stdout)
        assert ([m["system_id"] for m in listed["items"]], listed["total"]) == ([system_id], 1)
        assert json.loads((await operator.run("machines", "show", system_id, "--json")).stdout) == machine

        table = await operator.run("machines", "list")
        assert table.code == 0
        assert system_id in table.stdout and "cli-1" in table.stdout and "machines 1-1 of 1" in table.stdout

        missing = await operator.run("machines", "show", "zzzzzz")
        assert missing.code == 1
        assert missing.stderr.startswith("metalbus: ") and "zzzzzz" in missing.stderr
        assert missing.stderr.count("\n") == 1

        taken = await operator.run("machines", "add", "--mac", "52:54:00:c1:00:01")
        assert (taken.code, taken.stderr.count("\n")) == (1, 1)
        assert "MAC" in taken.stderr

        refused = await operator.run("machines", "list", env={"METALBUS_API_KEY": key[:-4] + "xxxx"})
        assert (refused.code, refused.stderr) == (1, "metalbus: not logged in or key refused\n")


async def test_commission_wait_follows_the_machine_until_the_region_fails_it(
    nats_server: NatsServer, database_dsn: str, tmp_path: Path
) -> None:
    async with operator_setup(nats_server, database_dsn, tmp_path) as (operator, key):
        env = {"METALBUS_URL": operator.api_url, "METALBUS_API_KEY": key}
        added = await operator.run("machines", "add", "--mac", "52:54:00:c1:00:02", "--json", env=env)
        system_id = json.loads(added.stdout)["system_id"]

        started = asyncio.get_running_loop().time()
        waited = await operator.run("machines", "commission", system_id, "--wait", "--timeout", "0.5", env=env)
        elapsed = asyncio.get_running_loop().time() - started
        assert waited.code == 1, (waited.stdout, waited.stderr)
        assert waited.stderr.startswith(f"metalbus: {system_id} is failed_commissioning: ")
        assert f"{system_id}: new -> commissioning (commission)" in waited.stdout
        assert f"{system_id}: commissioning -> failed_commissioning" in waited.stdout
        assert elapsed < 20

        conn = await asyncpg.connect(database_dsn)
        try:
            assert await conn.fetchval("SELECT status FROM machines WHERE system_id = $1", system_id) == (
                "failed_commissioning"
            )
        finally:
            await conn.close()

        events = await operator.run("events", "--kind", "machine", "--id", system_id, "--json", env=env)
        assert events.code == 0, events.stderr
        transitions = [(e["data"]["from_status"], e["data"]["to_status"]) for e in json.loads(events.stdout)["events"]]
        assert transitions == [(None, "new"), ("new", "commissioning"), ("commissioning", "failed_commissioning")]
        table = await operator.run("events", "--id", system_id, env=env)
        assert (
            f"{system_id}: added as new" in table.stdout
            and "new -> commissioning" in table.stdout
            and "commissioning -> failed_commissioning" in table.stdout
        )

        again = await operator.run("machines", "abort", system_id, env=env)
        assert again.code == 1
        assert "(current status: failed_commissioning)" in again.stderr


async def test_admin_create_key_over_nats_prints_a_key_the_api_accepts(
    nats_server: NatsServer, database_dsn: str, tmp_path: Path
) -> None:
    async with operator_setup(nats_server, database_dsn, tmp_path) as (operator, _):
        created = await operator.run("admin", "create-key", "--name", "ops laptop", "--nats-url", nats_server.url)
        assert created.code == 0, created.stderr
        key = created.stdout.strip()
        assert key.startswith("mb_") and "shown only now" in created.stderr
        env = {"METALBUS_URL": operator.api_url, "METALBUS_API_KEY": key}
        listed = await operator.run("machines", "list", "--json", env=env)
        assert (listed.code, json.loads(listed.stdout)["total"]) == (0, 0)
