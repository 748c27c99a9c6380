"""Machines through the bus against a real region, NATS and PostgreSQL: create, get, list, actions, events.

Each rule is checked where it shows: the reply, the rows in PostgreSQL, the events on the JetStream stream.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import nats.errors
import pytest
from nats.js.api import DeliverPolicy
from structlog.testing import capture_logs

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, Conflict, InvalidTransition, NotFound
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineEvent,
    MachineListQuery,
    MachineQuery,
    MachineStatus,
    PowerType,
)
from metalbus.subjects import (
    EVENTS_STREAM,
    MACHINE_ACTION,
    MACHINE_CREATE,
    MACHINE_GET,
    MACHINE_LIST,
    REGION_HEALTH,
)
from metalbus_region.service import serve_region
from metalbus_region.settings import RegionSettings
from tests.conftest import NatsServer
from tests.integration.test_region import eventually

BMC_SECRET = "bmc-s3cret-do-not-leak"
S = MachineStatus


@asynccontextmanager
async def region(nats: NatsServer, dsn: str, bus: Bus, replica_id: str = "r1", **settings: Any) -> AsyncIterator[None]:
    """One region replica with extra settings (short reaper interval, power timeout), once its database is up."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve_region(RegionSettings(nats_url=nats.url, database_dsn=dsn, replica_id=replica_id, **settings), stop)
    )
    try:
        await eventually(
            lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2),
            lambda health: health.replica_id == replica_id and health.database_reachable,
        )
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


@asynccontextmanager
async def database(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def ipmi_machine(mac: str = "52:54:00:00:00:01", bmc: str = "10.0.0.21", **fields: Any) -> MachineCreate:
    return MachineCreate(
        boot_mac=mac,
        power_type=PowerType.IPMI,
        power_parameters={"address": bmc, "port": 623, "username": "admin"},
        power_secrets={"password": BMC_SECRET},
        **fields,
    )


async def act(bus: Bus, system_id: str, action: MachineAction, **fields: Any) -> Machine:
    return await bus.request(
        MACHINE_ACTION, MachineActionRequest(system_id=system_id, action=action, **fields), timeout=10
    )


async def stream_events(bus: Bus, kind: str, system_id: str, expected: int) -> list[bytes]:
    """Exactly ``expected`` events on ``events.<kind>.<system_id>`` in the stream, in stream order."""
    subscription = await bus.client.jetstream().subscribe(
        f"events.{kind}.{system_id}", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    try:
        bodies = [(await subscription.next_msg(timeout=5)).data for _ in range(expected)]
        with pytest.raises(nats.errors.TimeoutError):
            await subscription.next_msg(timeout=0.3)
    finally:
        await subscription.unsubscribe()
    return bodies


async def machine_events(bus: Bus, system_id: str, expected: int) -> list[MachineEvent]:
    return [MachineEvent.from_json_bytes(body) for body in await stream_events(bus, "machine", system_id, expected)]


async def recorded_transitions(conn: asyncpg.Connection, system_id: str) -> list[tuple[str | None, str]]:
    """The machine events the region recorded in its outbox, in sequence order: (from, to)."""
    rows = await conn.fetch(
        "SELECT payload->>'from_status' AS f, payload->>'to_status' AS t FROM events WHERE subject = $1 "
        "ORDER BY sequence",
        f"events.machine.{system_id}",
    )
    return [(row["f"], row["t"]) for row in rows]


async def test_created_machine_is_new_stored_and_its_bmc_secret_is_never_replied_or_logged(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    with capture_logs() as logs:
        async with region(nats_server, database_dsn, bus):
            created = await bus.request(MACHINE_CREATE, ipmi_machine(hostname="node-1"), timeout=5)
            fetched = await bus.request(MACHINE_GET, MachineQuery(system_id=created.system_id), timeout=5)
            listed = await bus.request(MACHINE_LIST, MachineListQuery(), timeout=5)
            [event] = await machine_events(bus, created.system_id, 1)
    assert (created.status, created.hostname, created.boot_mac) == (S.NEW, "node-1", "52:54:00:00:00:01")
    assert (created.bmc_address, created.power_parameters["username"]) == ("10.0.0.21", "admin")
    assert fetched == created
    assert listed.machines == [created]
    for reply in (created, fetched, listed):
        assert BMC_SECRET not in reply.model_dump_json()
    assert any(entry["event"] == "machine.created" for entry in logs)
    assert BMC_SECRET not in repr(logs)
    assert (event.from_status, event.to_status, event.action) == (None, S.NEW, None)
    async with database(database_dsn) as conn:
        row = await conn.fetchrow(
            "SELECT status, host(bmc_address) AS bmc, row_to_json(m)::text AS whole FROM machines m"
        )
        secrets = await conn.fetchval(
            "SELECT secrets::text FROM machine_power_secrets WHERE system_id = $1", created.system_id
        )
    assert (row["status"], row["bmc"]) == ("new", "10.0.0.21")
    assert BMC_SECRET not in row["whole"]
    assert json.loads(secrets) == {"password": BMC_SECRET}


async def test_list_filters_by_status_and_unknown_machines_are_not_found(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        first = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        second = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:02"), timeout=5)
        await act(bus, second.system_id, MachineAction.MARK_BROKEN, reason="fan failure")
        broken = (await bus.request(MACHINE_LIST, MachineListQuery(status=S.BROKEN), timeout=5)).machines
        new = (await bus.request(MACHINE_LIST, MachineListQuery(status=S.NEW), timeout=5)).machines
        ready = (await bus.request(MACHINE_LIST, MachineListQuery(status=S.READY), timeout=5)).machines
        everything = (await bus.request(MACHINE_LIST, MachineListQuery(), timeout=5)).machines
        with pytest.raises(NotFound, match="no machine zzzzzz"):
            await bus.request(MACHINE_GET, MachineQuery(system_id="zzzzzz"), timeout=5)
        with pytest.raises(NotFound, match="no machine zzzzzz"):
            await act(bus, "zzzzzz", MachineAction.MARK_BROKEN)
    assert [(m.system_id, m.status_reason) for m in broken] == [(second.system_id, "fan failure")]
    assert [m.system_id for m in new] == [first.system_id]
    assert ready == []
    assert sorted(m.system_id for m in everything) == sorted([first.system_id, second.system_id])


async def test_a_boot_mac_already_taken_is_a_conflict_in_any_spelling(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        await bus.request(MACHINE_CREATE, ipmi_machine(mac="52:54:00:ab:cd:ef"), timeout=5)
        with pytest.raises(Conflict, match="boot MAC"):
            await bus.request(MACHINE_CREATE, ipmi_machine(mac="52-54-00-AB-CD-EF"), timeout=5)
    async with database(database_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM machines") == 1
        assert await conn.fetchval("SELECT count(*) FROM machine_power_secrets") == 1
        assert await conn.fetchval("SELECT count(*) FROM events WHERE subject LIKE 'events.machine.%'") == 1


async def test_create_repeated_with_the_same_idempotency_key_makes_one_machine(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    request = ipmi_machine(idempotency_key="create-node-1-0001")
    async with region(nats_server, database_dsn, bus):
        first = await bus.request(MACHINE_CREATE, request, timeout=5)
        again = await bus.request(MACHINE_CREATE, request, timeout=5)
        other = await bus.request(
            MACHINE_CREATE, ipmi_machine(mac="52:54:00:00:00:02", idempotency_key="create-node-2-0001"), timeout=5
        )
    assert again == first
    assert other.system_id != first.system_id
    async with database(database_dsn) as conn:
        assert await conn.fetchval("SELECT count(*) FROM machines") == 2
        assert await recorded_transitions(conn, first.system_id) == [(None, "new")]


async def test_action_repeated_with_the_same_idempotency_key_is_applied_once(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        first = await act(bus, machine.system_id, MachineAction.MARK_BROKEN, idempotency_key="broken-0001")
        # Applied again, mark_broken of a broken machine would be refused: the repeat answers instead.
        again = await act(bus, machine.system_id, MachineAction.MARK_BROKEN, idempotency_key="broken-0001")
        with pytest.raises(InvalidTransition):
            await act(bus, machine.system_id, MachineAction.MARK_BROKEN, idempotency_key="broken-0002")
        events = await machine_events(bus, machine.system_id, 2)
    assert first.status == again.status == S.BROKEN
    assert [(e.from_status, e.to_status) for e in events] == [(None, S.NEW), (S.NEW, S.BROKEN)]
    async with database(database_dsn) as conn:
        assert await recorded_transitions(conn, machine.system_id) == [(None, "new"), ("new", "broken")]
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 1


async def test_an_action_the_status_does_not_allow_is_a_typed_invalid_transition_and_changes_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        with pytest.raises(InvalidTransition, match="cannot abort a machine that is new") as caught:
            await act(bus, machine.system_id, MachineAction.ABORT)
        with pytest.raises(InvalidTransition, match="cannot mark_fixed a machine that is new"):
            await act(bus, machine.system_id, MachineAction.MARK_FIXED, idempotency_key="fixed-0001")
        for region_only in (MachineAction.COMMISSIONING_SUCCEEDED, MachineAction.COMMISSIONING_FAILED):
            with pytest.raises(BadRequest, match="taken by the region"):
                await act(bus, machine.system_id, region_only)
        after = await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id), timeout=5)
    assert caught.value.http_status == 409
    assert after == machine
    async with database(database_dsn) as conn:
        assert await recorded_transitions(conn, machine.system_id) == [(None, "new")]
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys") == 0  # a refusal keeps no key


async def test_every_transition_is_an_event_on_the_stream_with_increasing_sequence(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        # Manual power: the operator powers it, so commissioning needs no rack here.
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        commissioning = await act(bus, machine.system_id, MachineAction.COMMISSION, commissioning_timeout_s=600)
        aborted = await act(bus, machine.system_id, MachineAction.ABORT, reason="wrong machine")
        await act(bus, machine.system_id, MachineAction.MARK_BROKEN)
        fixed = await act(bus, machine.system_id, MachineAction.MARK_FIXED)
        events = await machine_events(bus, machine.system_id, 5)
    assert commissioning.status == S.COMMISSIONING and commissioning.commissioning_deadline is not None
    assert (aborted.status, aborted.status_reason, aborted.commissioning_deadline) == (S.NEW, "wrong machine", None)
    assert fixed.status == S.NEW
    assert [(e.action, e.from_status, e.to_status) for e in events] == [
        (None, None, S.NEW),
        (MachineAction.COMMISSION, S.NEW, S.COMMISSIONING),
        (MachineAction.ABORT, S.COMMISSIONING, S.NEW),
        (MachineAction.MARK_BROKEN, S.NEW, S.BROKEN),
        (MachineAction.MARK_FIXED, S.BROKEN, S.NEW),
    ]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences) and len(set(sequences)) == 5
    assert all(e.system_id == machine.system_id for e in events)
