"""rack-proxy's syslog relay with util-linux `logger` as the client and a real region, NATS and PostgreSQL.

A machine's client runs in a network namespace whose address holds a bound lease of that machine's boot MAC, so
its lines must be stored attributed to it; lines from anywhere else are stored unattributed; nothing is dropped
without a count.
"""

import asyncio
import contextlib
import secrets
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

import asyncpg
import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.machines import MachineCreate
from metalbus.contracts.syslog import SyslogAck, SyslogBatch, SyslogEvent
from metalbus.db.migrate import apply_migrations
from metalbus.subjects import EVENTS_STREAM, MACHINE_CREATE, SYSLOG_INTAKE
from metalbus_rack_proxy.syslog_relay import SyslogRelay, SyslogRelayConfig, region_sender
from metalbus_region.syslog_intake import store_batch, trim_lines
from tests.conftest import NatsServer, free_port
from tests.integration.test_leases import create_subnet, offer_and_commit, wait_until_replicas_ready
from tests.integration.test_region import eventually, running_region


def run_sync(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout


def unused_prefix() -> str:
    """A 10.78.<n> that no route of the root namespace uses (other runs may hold some)."""
    routes = run_sync("ip", "-4", "route", "show")
    return f"10.78.{secrets.choice([n for n in range(1, 255) if f'10.78.{n}.' not in routes])}"


@dataclass(frozen=True)
class MachineLink:
    """A namespace holding the machine's end of a veth; the rack's end is ``rack_address`` in the root namespace."""

    namespace: str
    machine_if: str
    prefix: str
    mac: str

    @property
    def rack_address(self) -> str:
        return f"{self.prefix}.2"


@pytest.fixture
def machine_link() -> Iterator[MachineLink]:
    suffix = secrets.token_hex(3)
    namespace, rack_if, machine_if = f"mbsl{suffix}", f"mbsr{suffix}", f"mbsm{suffix}"
    prefix = unused_prefix()
    try:
        run_sync("ip", "netns", "add", namespace)
        run_sync("ip", "link", "add", rack_if, "type", "veth", "peer", "name", machine_if, "netns", namespace)
        run_sync("ip", "addr", "add", f"{prefix}.2/24", "dev", rack_if)
        run_sync("ip", "link", "set", rack_if, "up")
        run_sync("ip", "-n", namespace, "link", "set", "lo", "up")
        run_sync("ip", "-n", namespace, "link", "set", machine_if, "up")
        mac = run_sync("ip", "netns", "exec", namespace, "cat", f"/sys/class/net/{machine_if}/address").strip()
        yield MachineLink(namespace, machine_if, prefix, mac)
    finally:
        for command in (("ip", "link", "del", rack_if), ("ip", "netns", "del", namespace)):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                run_sync(*command)


@pytest.fixture
async def region(nats_server: NatsServer, database_dsn: str, bus: Bus) -> AsyncIterator[Bus]:
    async with running_region(nats_server, database_dsn, "r1"):
        await wait_until_replicas_ready(bus, {"r1"})
        yield bus


@pytest.fixture
async def db(database_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_dsn)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def running_relay(bus: Bus, **config: object) -> AsyncIterator[SyslogRelay]:
    settings = {"host": "0.0.0.0", "ports": (free_port(), free_port()), "batch_interval_s": 0.05, **config}
    relay = SyslogRelay("rack-1", region_sender(bus), SyslogRelayConfig(**settings))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    await asyncio.wait_for(relay.listening.wait(), timeout=5)
    try:
        yield relay
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def logger(*argv: str, namespace: str | None = None) -> None:
    prefix = ("ip", "netns", "exec", namespace) if namespace else ()
    process = await asyncio.create_subprocess_exec(*prefix, "logger", *argv)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0


async def rows_of(db: asyncpg.Connection, expected: int, where: str = "true") -> list[asyncpg.Record]:
    async def probe() -> list[asyncpg.Record]:
        return await db.fetch(f"SELECT * FROM syslog_lines WHERE {where} ORDER BY line_id")

    return await eventually(probe, lambda rows: len(rows) >= expected, timeout=10)


async def syslog_events(bus: Bus, subject: str, expected_lines: int) -> list[SyslogEvent]:
    subscription = await bus.client.jetstream().subscribe(
        subject, stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    events: list[SyslogEvent] = []
    with contextlib.suppress(TimeoutError):
        while sum(event.lines for event in events) < expected_lines:
            events.append(SyslogEvent.from_json_bytes((await subscription.next_msg(timeout=5)).data))
    await subscription.unsubscribe()
    return events


async def test_logger_lines_from_a_leased_address_are_stored_attributed_to_its_machine(
    region: Bus, db: asyncpg.Connection, machine_link: MachineLink
) -> None:
    machine = await region.request(MACHINE_CREATE, MachineCreate(boot_mac=machine_link.mac), timeout=5)
    prefix = machine_link.prefix
    await create_subnet(
        region, f"{prefix}.0/24", gateway=f"{prefix}.1", dns_servers=[f"{prefix}.2"],
        dynamic_start=f"{prefix}.100", dynamic_end=f"{prefix}.199",
    )  # fmt: skip
    lease = await offer_and_commit(region, machine_link.mac, link=IPv4Address(machine_link.rack_address))
    run_sync("ip", "-n", machine_link.namespace, "addr", "add", f"{lease.ip}/24", "dev", machine_link.machine_if)
    async with running_relay(region) as relay:
        udp_port, tcp_port = relay.config.ports
        server = ("--server", machine_link.rack_address)
        ns = machine_link.namespace
        await logger(
            *server, "--port", str(udp_port), "--udp", "--rfc5424", "-t", "cloud-init", "udp 5424", namespace=ns
        )
        await logger(*server, "--port", str(tcp_port), "--tcp", "--rfc3164", "-t", "curtin", "tcp 3164", namespace=ns)
        await logger(
            *server, "--port", str(udp_port), "--tcp", "--octet-count", "-p", "daemon.err", "counted", namespace=ns
        )
        rows = await rows_of(db, 3)
    by_text = {row["text"]: row for row in rows}
    assert set(by_text) == {"udp 5424", "tcp 3164", "counted"}
    assert {row["system_id"] for row in rows} == {machine.system_id}
    assert {row["source_ip"] for row in rows} == {lease.ip}
    assert (by_text["udp 5424"]["format"], by_text["udp 5424"]["app_name"]) == ("rfc5424", "cloud-init")
    assert (by_text["tcp 3164"]["format"], by_text["tcp 3164"]["app_name"]) == ("rfc3164", "curtin")
    assert (by_text["counted"]["facility"], by_text["counted"]["severity"]) == (3, 3)
    events = await syslog_events(region, f"events.syslog.{machine.system_id}", 3)
    assert sum(event.lines for event in events) == 3
    assert {event.system_id for event in events} == {machine.system_id}


async def test_unleased_sources_are_stored_unattributed_and_malformed_lines_kept_raw(
    region: Bus, db: asyncpg.Connection
) -> None:
    async with running_relay(region, host="127.0.0.1") as relay:
        udp_port, _ = relay.config.ports
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"\xffgarbage\x00without a PRI", ("127.0.0.1", udp_port))
        await logger("--server", "127.0.0.1", "--port", str(udp_port), "--udp", "--rfc5424", "well formed")
        rows = await rows_of(db, 2)
        assert relay.counters.malformed == 1
    by_format = {row["format"]: row for row in rows}
    assert by_format["raw"]["raw"] == "\\xffgarbage\\x00without a PRI"
    assert by_format["rfc5424"]["text"] == "well formed"
    assert {row["system_id"] for row in rows} == {None}
    events = await syslog_events(region, "events.syslog.unknown", 2)
    assert sum(event.lines for event in events) == 2 and {event.system_id for event in events} == {None}


async def test_lines_beyond_a_sources_rate_are_counted_and_summarised(region: Bus, db: asyncpg.Connection) -> None:
    async with running_relay(region, host="127.0.0.1", rate_per_source=0.001, burst_per_source=3) as relay:
        udp_port, _ = relay.config.ports
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for number in range(10):
                sender.sendto(f"<13>1 - host app - - - line {number}".encode(), ("127.0.0.1", udp_port))
        rows = await rows_of(db, 4)
        assert relay.counters.rate_limited == 7
    assert [row["text"] for row in rows] == ["line 0", "line 1", "line 2", "7 lines dropped by rate limit"]
    assert rows[-1]["app_name"] == "metalbus-syslog-relay"


async def test_lines_wait_while_the_region_is_away_and_are_stored_once_it_is_back(
    nats_server: NatsServer, database_dsn: str, bus: Bus, db: asyncpg.Connection
) -> None:
    async with running_relay(bus, host="127.0.0.1", retry_delay_s=0.1) as relay:
        udp_port, _ = relay.config.ports
        await logger("--server", "127.0.0.1", "--port", str(udp_port), "--udp", "while away")
        await eventually(lambda: asyncio.sleep(0, relay.counters.batch_failures), lambda failures: failures >= 1)
        async with running_region(nats_server, database_dsn, "r1"):
            await wait_until_replicas_ready(bus, {"r1"})
            rows = await rows_of(db, 1)
            await logger("--server", "127.0.0.1", "--port", str(udp_port), "--udp", "once back")
            rows = await rows_of(db, 2)
    assert [row["text"] for row in rows] == ["while away", "once back"]


def batch_of(texts: list[str], batch_id: str | None = None) -> SyslogBatch:
    at = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    messages = [
        {"received_at": at + timedelta(seconds=n), "source_ip": "192.0.2.9", "text": text, "format": "rfc3164"}
        for n, text in enumerate(texts)
    ]
    return SyslogBatch.model_validate({"rack_id": "rack-1", "batch_id": batch_id, "messages": messages})


async def test_a_retried_batch_is_stored_once(region: Bus, db: asyncpg.Connection) -> None:
    batch = batch_of(["once"], batch_id="syslog-rack-1-retried")
    first = await region.request(SYSLOG_INTAKE, batch, timeout=5)
    again = await region.request(SYSLOG_INTAKE, batch, timeout=5)
    assert first == again == SyslogAck(stored=1, attributed=0)
    assert await db.fetchval("SELECT count(*) FROM syslog_lines") == 1


async def test_retention_keeps_only_the_newest_lines_of_each_owner(db: asyncpg.Connection) -> None:
    await apply_migrations(db)
    async with db.transaction():
        await store_batch(db, batch_of([f"line {n}" for n in range(12)]))
        await trim_lines(db, None, keep=5)
    texts = await db.fetch("SELECT text FROM syslog_lines ORDER BY received_at")
    assert [row["text"] for row in texts] == [f"line {n}" for n in range(7, 12)]
