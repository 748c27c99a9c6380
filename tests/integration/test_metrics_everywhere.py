"""The region and rack-power serve /metrics as they run: scraped over HTTP, parsed with prometheus_client's parser,
their families move with real requests; and with JSON logs every line about a machine names its system_id."""

import asyncio
import contextlib
import io
import json
import socket
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Interface
from typing import Any

import httpx
import pytest
import structlog

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, NotFound, Unavailable
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.machines import MachineCreate, MachineQuery, PowerType
from metalbus.contracts.power import PowerAction, PowerCommand, PowerState
from metalbus.logging import configure_logging
from metalbus.stack.metrics import Samples, parse_samples, total
from metalbus.subjects import MACHINE_CREATE, MACHINE_GET, RACK_POWER_COMMAND, REGION_HEALTH
from metalbus_rack_power.service import run_rack_power
from metalbus_rack_power.settings import RackPowerSettings
from metalbus_region.metrics import RegionMetrics
from tests.conftest import NatsServer, free_port
from tests.integration.test_region import eventually, running_region

RACK = "rack-metrics"


async def scrape(port: int) -> Samples:
    """Every sample of ``http://127.0.0.1:<port>/metrics``; empty while nothing listens there yet."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.TransportError:
        return []
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse_samples(response.text)


def value(samples: Samples, name: str, **labels: str) -> float | None:
    found = [v for sample, sample_labels, v in samples if sample == name and sample_labels == labels]
    return found[0] if found else None


def families(samples: Samples) -> set[str]:
    return {sample for sample, _, _ in samples}


@contextlib.asynccontextmanager
async def running_rack_power(nats_server: NatsServer, metrics_port: int, **overrides: Any) -> AsyncIterator[None]:
    settings = RackPowerSettings(
        nats_url=nats_server.url,
        rack_id=RACK,
        heartbeat_interval_s=0.5,
        poll_interval_s=0.2,
        interfaces=[IPv4Interface("127.0.0.1/8")],
        request_timeout_s=2,
        retries=0,
        metrics_port=metrics_port,
        **overrides,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_rack_power(settings, stop))
    try:
        await eventually(lambda: scrape(metrics_port), bool)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


async def send(bus: Bus, command: PowerCommand) -> PowerState:
    return (await bus.request(RACK_POWER_COMMAND, command, timeout=10, rack_id=RACK)).state


async def test_region_metrics_count_requests_by_subject_and_outcome_and_show_outbox_and_pool(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    port = free_port()
    async with running_region(nats_server, database_dsn, "r-metrics", metrics_port=port):
        await eventually(lambda: scrape(port), bool)
        await eventually(lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), lambda h: h.database_reachable)
        created = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:0a:01"), timeout=5)
        with pytest.raises(NotFound):
            await bus.request(MACHINE_GET, MachineQuery(system_id="zz99zz"), timeout=5)
        samples = await eventually(
            lambda: scrape(port),
            lambda found: total(found, "metalbus_region_outbox_published_events_total") >= 1,
        )
    create, get = MACHINE_CREATE.pattern, MACHINE_GET.pattern
    assert created.system_id
    assert value(samples, "metalbus_region_requests_total", subject=create, outcome="ok") == 1
    assert value(samples, "metalbus_region_requests_total", subject=get, outcome="not_found") == 1
    assert value(samples, "metalbus_region_request_duration_seconds_count", subject=create) == 1
    assert value(samples, "metalbus_region_request_duration_seconds_bucket", subject=get, le="+Inf") == 1
    assert {
        "metalbus_region_outbox_backlog_events",
        "metalbus_region_db_pool_connections",
        "metalbus_region_db_pool_in_use_connections",
        "metalbus_region_db_pool_max_connections",
    } <= families(samples)
    assert value(samples, "metalbus_region_db_pool_max_connections") == 10  # database_pool_max's default


async def test_rack_power_metrics_count_commands_bmc_calls_and_poll_rounds(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    port = free_port()
    manual = PowerCommand(system_id="abc123", action=PowerAction.QUERY, power_type=PowerType.MANUAL)
    async with (
        running_region(nats_server, database_dsn, "r-power-metrics"),
        running_rack_power(nats_server, port),
    ):
        assert await send(bus, manual) is PowerState.UNKNOWN
        with pytest.raises(BadRequest):
            await send(bus, manual.model_copy(update={"action": PowerAction.ON}))
        samples = await eventually(
            lambda: scrape(port),
            lambda found: (value(found, "metalbus_rack_power_poll_rounds_total", outcome="ok") or 0) >= 1,
        )
    assert value(samples, "metalbus_rack_power_commands_total", action="query", outcome="ok") == 1
    assert value(samples, "metalbus_rack_power_commands_total", action="on", outcome="bad_request") == 1
    timed = {"power_type": "manual", "operation": "query"}
    assert value(samples, "metalbus_rack_power_bmc_request_duration_seconds_count", **timed) == 1
    assert value(samples, "metalbus_rack_power_bmc_request_duration_seconds_count", power_type="manual", operation="on")
    assert value(samples, "metalbus_rack_power_commands_total", action="off", outcome="ok") is None


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The services' JSON logging, written to a buffer for the test to read; structlog's defaults afterwards."""
    buffer = io.StringIO()
    configure_logging("info", json_lines=True, stream=buffer, cache_loggers=False)
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


async def test_with_json_logs_every_line_logged_while_handling_a_machine_request_names_the_machine(
    nats_server: NatsServer, database_dsn: str, bus: Bus, json_log: io.StringIO
) -> None:
    async with running_region(nats_server, database_dsn, "r-logs"):
        created = await eventually(
            lambda: bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:0a:02"), timeout=5), bool
        )
        await bus.request(MACHINE_GET, MachineQuery(system_id=created.system_id), timeout=5)
    lines = json_lines(json_log)
    [created_line] = [line for line in lines if line.get("event") == "machine.created"]
    assert created_line["system_id"] == created.system_id
    assert created_line["level"] == "info"
    assert {line["event"] for line in lines} >= {"region.serving", "region.stopped"}


@pytest.fixture
def silent_bmc() -> Iterator[int]:
    """A UDP port on loopback that takes IPMI datagrams and never answers (no ICMP refusal either)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        yield int(sink.getsockname()[1])


async def test_a_rack_power_line_that_does_not_name_the_machine_itself_still_carries_its_system_id(
    nats_server: NatsServer, bus: Bus, json_log: io.StringIO, silent_bmc: int
) -> None:
    command = PowerCommand(
        system_id="slnt42",
        action=PowerAction.QUERY,
        power_type=PowerType.IPMI,
        parameters={"address": "127.0.0.1", "port": silent_bmc, "username": "admin"},
        secrets={"password": "not-logged-5f1e"},
    )
    async with running_rack_power(nats_server, free_port(), ipmi_timeout_s=0.5):
        with pytest.raises(Unavailable, match="did not answer"):
            await send(bus, command)
    lines = json_lines(json_log)
    [timeout] = [line for line in lines if line.get("event") == "ipmi.timeout"]  # ipmi.py does not pass system_id
    assert timeout["system_id"] == "slnt42"
    assert timeout["bmc"].startswith("127.0.0.1")
    assert [line["system_id"] for line in lines if line.get("event") == "power.failed"] == ["slnt42"]
    assert "not-logged-5f1e" not in json_log.getvalue()
    assert all("system_id" not in line for line in lines if line.get("event") == "power.serving")


async def test_the_region_dispatch_binds_the_requests_system_id_for_every_line_the_handler_logs(
    json_log: io.StringIO,
) -> None:
    metrics = RegionMetrics()
    handler_log = structlog.get_logger("test.handler")

    async def get_machine(query: MachineQuery) -> MachineQuery:
        handler_log.info("handler.working")  # names no machine itself
        return query

    async def health(query: HealthQuery) -> HealthQuery:
        handler_log.info("handler.health")
        return query

    instrumented = metrics.instrumented(MACHINE_GET, get_machine)
    await asyncio.create_task(instrumented(MachineQuery(system_id="bnd123")))  # each request: a task of its own
    await asyncio.create_task(metrics.instrumented(REGION_HEALTH, health)(HealthQuery()))
    lines = {line["event"]: line for line in json_lines(json_log)}
    assert lines["handler.working"]["system_id"] == "bnd123"
    assert "system_id" not in lines["handler.health"]
    assert (
        metrics.registry.get_sample_value(
            "metalbus_region_requests_total", {"subject": MACHINE_GET.pattern, "outcome": "ok"}
        )
        == 1
    )
