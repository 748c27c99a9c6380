"""Machine administration through the bus against a real region, NATS and PostgreSQL: update, delete, paged
listing, power commands, and reading back the inventory and results commissioning stored.

The test plays the racks' rack-power (power) and the machine itself (metadata signals) where those take part.
"""

import json
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from metalbus.bus import Bus
from metalbus.contracts.common import Architecture
from metalbus.contracts.errors import BadRequest, Conflict, InvalidTransition, NotFound, Unavailable
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineCreate,
    MachineListQuery,
    MachineQuery,
    MachineStatus,
    MachineUpdate,
    PowerType,
)
from metalbus.contracts.metadata import (
    HardwareInventory,
    MetadataSignal,
    OAuthCredentials,
    ScriptResult,
    SignalStatus,
)
from metalbus.contracts.power import MachinePowerRequest, PowerAction, PowerState
from metalbus.subjects import (
    MACHINE_CREATE,
    MACHINE_DELETE,
    MACHINE_GET,
    MACHINE_INVENTORY,
    MACHINE_LIST,
    MACHINE_POWER,
    MACHINE_RESULTS,
    MACHINE_UPDATE,
    METADATA_SIGNAL,
)
from tests.conftest import NatsServer
from tests.integration.test_commissioning import BMC_NETWORK, FakeRackPower, add_power_rack, power_events
from tests.integration.test_machines import (
    BMC_SECRET,
    act,
    database,
    ipmi_machine,
    machine_events,
    recorded_transitions,
    region,
)

S = MachineStatus
NEW_SECRET = "rotated-bmc-s3cret"
INVENTORY = HardwareInventory(
    cpu_model="QEMU Virtual CPU version 2.5+",
    cpu_count=4,
    cpu_speed_mhz=2400,
    memory_mib=8192,
    block_devices=[{"name": "vda", "size_bytes": 10737418240, "model": "QEMU HARDDISK", "serial": "disk-1"}],
    interfaces=[{"name": "eth0", "mac": "52:54:00:00:00:01", "link_up": True, "speed_mbps": 1000}],
    lldp_neighbours=[{"interface": "eth0", "chassis_id": "aa:bb:cc:00:00:01", "port_id": "ge-0/0/1"}],
)


async def update(bus: Bus, system_id: str, **fields: Any) -> Machine:
    return await bus.request(MACHINE_UPDATE, MachineUpdate(system_id=system_id, **fields), timeout=5)


async def stored_secrets(conn: asyncpg.Connection, system_id: str) -> dict[str, str] | None:
    stored = await conn.fetchval("SELECT secrets::text FROM machine_power_secrets WHERE system_id = $1", system_id)
    return None if stored is None else dict(json.loads(stored))


async def test_update_changes_only_the_given_fields_moves_the_bmc_address_and_replaces_the_secrets(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    with capture_logs() as logs:
        async with region(nats_server, database_dsn, bus):
            machine = await bus.request(MACHINE_CREATE, ipmi_machine(hostname="node-1"), timeout=5)
            renamed = await update(
                bus,
                machine.system_id,
                hostname="node-renamed",
                power_parameters={"address": "10.0.0.99", "port": 623, "username": "operator"},
                power_secrets={"password": NEW_SECRET},
            )
            rearchitected = await update(bus, machine.system_id, architecture=Architecture.ARM64_UEFI)
            fetched = await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id), timeout=5)
    assert (renamed.hostname, renamed.architecture, renamed.boot_mac) == (
        "node-renamed",
        machine.architecture,
        "52:54:00:00:00:01",
    )
    assert (renamed.bmc_address, renamed.power_parameters["username"]) == ("10.0.0.99", "operator")
    assert (rearchitected.architecture, rearchitected.hostname, rearchitected.bmc_address) == (
        "arm64/uefi",
        "node-renamed",
        "10.0.0.99",
    )
    assert fetched == rearchitected
    assert (fetched.status, fetched.power_type, fetched.created_at) == (S.NEW, PowerType.IPMI, machine.created_at)
    for reply in (renamed, rearchitected, fetched):
        assert NEW_SECRET not in reply.model_dump_json() and BMC_SECRET not in reply.model_dump_json()
    assert NEW_SECRET not in repr(logs)
    assert any(entry["event"] == "machine.updated" for entry in logs)
    async with database(database_dsn) as conn:
        row = await conn.fetchrow(
            "SELECT hostname, architecture, host(bmc_address) AS bmc FROM machines WHERE system_id = $1",
            machine.system_id,
        )
        assert tuple(row) == ("node-renamed", "arm64/uefi", "10.0.0.99")
        assert await stored_secrets(conn, machine.system_id) == {"password": NEW_SECRET}
        # The creation, then one event per update that keeps the status (racks drop what they cached).
        assert await recorded_transitions(conn, machine.system_id) == [(None, "new"), ("new", "new"), ("new", "new")]
        payloads = await conn.fetch("SELECT payload::text AS p FROM events WHERE subject LIKE 'events.machine.%'")
        assert all(NEW_SECRET not in row["p"] and BMC_SECRET not in row["p"] for row in payloads)


async def test_update_without_an_address_clears_the_bmc_address_and_empty_secrets_remove_them(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        manual = await update(
            bus, machine.system_id, power_type=PowerType.MANUAL, power_parameters={}, power_secrets={}
        )
    assert (manual.power_type, manual.power_parameters, manual.bmc_address) == (PowerType.MANUAL, {}, None)
    async with database(database_dsn) as conn:
        assert await stored_secrets(conn, machine.system_id) is None


async def test_update_to_another_machines_hostname_or_mac_is_a_conflict_and_bad_fields_change_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        first = await bus.request(MACHINE_CREATE, ipmi_machine(hostname="node-1"), timeout=5)
        second = await bus.request(MACHINE_CREATE, ipmi_machine(mac="52:54:00:00:00:02", hostname="node-2"), timeout=5)
        with pytest.raises(Conflict, match="hostname"):
            await update(bus, second.system_id, hostname="node-1", architecture=Architecture.AMD64_UEFI)
        with pytest.raises(Conflict, match="boot MAC"):
            await update(bus, second.system_id, boot_mac="52-54-00-00-00-01", power_secrets={"password": NEW_SECRET})
        with pytest.raises(BadRequest, match="not an IP address"):
            await update(bus, second.system_id, power_parameters={"address": "bmc.example"})
        with pytest.raises(NotFound, match="no machine zzzzzz"):
            await update(bus, "zzzzzz", hostname="node-9")
        after = await bus.request(MACHINE_GET, MachineQuery(system_id=second.system_id), timeout=5)
    assert after == second
    assert first.hostname == "node-1"
    async with database(database_dsn) as conn:
        assert await stored_secrets(conn, second.system_id) == {
            "password": BMC_SECRET
        }  # the refused update rolled back
        assert await conn.fetchval("SELECT count(*) FROM machines") == 2


async def test_update_repeated_with_the_same_idempotency_key_is_applied_once(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        first = await update(bus, machine.system_id, hostname="node-a", idempotency_key="rename-0001")
        await update(bus, machine.system_id, hostname="node-b")
        repeated = await update(bus, machine.system_id, hostname="node-a", idempotency_key="rename-0001")
        current = await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id), timeout=5)
    assert repeated == first and first.hostname == "node-a"
    assert current.hostname == "node-b", "the repeat was answered, not applied again"
    async with database(database_dsn) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE subject = 'region.machines.update'") == 1
        )


async def test_delete_refuses_a_commissioning_machine_and_otherwise_removes_it_with_all_that_hangs_on_it(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        # Manual power: commissioning needs no rack; the secrets are stored all the same.
        machine = await bus.request(
            MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01", power_secrets={"password": "x"}), timeout=5
        )
        other = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:02"), timeout=5)
        await act(bus, machine.system_id, MachineAction.COMMISSION, commissioning_timeout_s=600)
        with pytest.raises(InvalidTransition, match="cannot delete a machine that is commissioning"):
            await bus.request(MACHINE_DELETE, MachineQuery(system_id=machine.system_id), timeout=5)
        assert (
            await conn.fetchval("SELECT status FROM machines WHERE system_id = $1", machine.system_id)
            == "commissioning"
        )
        await act(bus, machine.system_id, MachineAction.ABORT)
        deleted = await bus.request(MACHINE_DELETE, MachineQuery(system_id=machine.system_id), timeout=5)
        with pytest.raises(NotFound, match=f"no machine {machine.system_id}"):
            await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id), timeout=5)
        with pytest.raises(NotFound, match=f"no machine {machine.system_id}"):
            await bus.request(MACHINE_DELETE, MachineQuery(system_id=machine.system_id), timeout=5)
        remaining = (await bus.request(MACHINE_LIST, MachineListQuery(), timeout=5)).machines
        leftovers = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE system_id = $1", machine.system_id)
            for table in ("machines", "machine_power_secrets", "metadata_tokens")
        }
    assert deleted.system_id == machine.system_id
    assert [m.system_id for m in remaining] == [other.system_id]
    assert leftovers == {"machines": 0, "machine_power_secrets": 0, "metadata_tokens": 0}


async def test_list_pages_cover_every_match_exactly_once_with_the_total_and_filters_combine(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machines = []
        for number in range(25):
            create = MachineCreate(
                boot_mac=f"52:54:00:00:01:{number:02x}",
                hostname=f"node-{(number * 7) % 25:02d}",  # created out of hostname order
                architecture=Architecture.ARM64_UEFI if number % 2 else Architecture.AMD64_BIOS,
            )
            machines.append(await bus.request(MACHINE_CREATE, create, timeout=5))
        for machine in machines[:9]:
            await act(bus, machine.system_id, MachineAction.MARK_BROKEN)
        pages = [
            await bus.request(MACHINE_LIST, MachineListQuery(offset=offset, limit=10), timeout=5)
            for offset in (0, 10, 20, 30)
        ]
        broken_arm = await bus.request(
            MACHINE_LIST,
            MachineListQuery(status=S.BROKEN, architecture=Architecture.ARM64_UEFI, limit=2, offset=2),
            timeout=5,
        )
        by_hostname = await bus.request(MACHINE_LIST, MachineListQuery(hostname="node-14"), timeout=5)
        no_match = await bus.request(MACHINE_LIST, MachineListQuery(hostname="node-14", status=S.READY), timeout=5)
    assert [len(page.machines) for page in pages] == [10, 10, 5, 0]
    assert [(page.total, page.offset) for page in pages] == [(25, 0), (25, 10), (25, 20), (25, 30)]
    listed = [m.hostname for page in pages for m in page.machines]
    assert listed == sorted(m.hostname for m in machines), "every machine once, in hostname order"
    expected_broken_arm = sorted(m.hostname for m in machines[:9] if m.architecture is Architecture.ARM64_UEFI)
    assert len(expected_broken_arm) == 4
    assert (broken_arm.total, [m.hostname for m in broken_arm.machines]) == (4, expected_broken_arm[2:4])
    assert all(m.status is S.BROKEN for m in broken_arm.machines)
    assert (by_hostname.total, [m.hostname for m in by_hostname.machines]) == (1, ["node-14"])
    assert (no_match.total, no_match.machines) == (0, [])


async def test_power_goes_through_the_rack_that_reaches_the_bmc_with_the_secrets_and_is_recorded(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    rack = FakeRackPower("rack-a")
    async with region(nats_server, database_dsn, bus):
        await add_power_rack(bus, database_dsn, "rack-a", BMC_NETWORK)
        await rack.serve(bus)
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        replies = [
            await bus.request(
                MACHINE_POWER, MachinePowerRequest(system_id=machine.system_id, action=action), timeout=10
            )
            for action in (PowerAction.ON, PowerAction.QUERY, PowerAction.OFF)
        ]
        events = await power_events(bus, machine.system_id, 3)
    assert [(r.system_id, r.state) for r in replies] == [
        (machine.system_id, PowerState.ON),
        (machine.system_id, PowerState.ON),
        (machine.system_id, PowerState.OFF),
    ]
    assert rack.actions == [PowerAction.ON, PowerAction.QUERY, PowerAction.OFF]
    assert all(command.secrets == {"password": BMC_SECRET} for command in rack.commands)
    assert all(BMC_SECRET not in reply.model_dump_json() for reply in replies)
    assert [(e.action, e.state, e.rack_id, e.error) for e in events] == [
        (PowerAction.ON, PowerState.ON, "rack-a", None),
        (PowerAction.QUERY, PowerState.ON, "rack-a", None),
        (PowerAction.OFF, PowerState.OFF, "rack-a", None),
    ]


async def test_power_of_a_manual_machine_is_a_bad_request_and_a_failure_is_unavailable_and_recorded(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        manual = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:02"), timeout=5)
        unreachable = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)  # no rack reaches its BMC
        with pytest.raises(BadRequest, match="manual power: the operator powers this machine"):
            await bus.request(MACHINE_POWER, MachinePowerRequest(system_id=manual.system_id, action=PowerAction.ON))
        with pytest.raises(Unavailable, match=r"no healthy rack reaches BMC 10\.0\.0\.21"):
            await bus.request(
                MACHINE_POWER, MachinePowerRequest(system_id=unreachable.system_id, action=PowerAction.CYCLE)
            )
        with pytest.raises(NotFound, match="no machine zzzzzz"):
            await bus.request(MACHINE_POWER, MachinePowerRequest(system_id="zzzzzz", action=PowerAction.QUERY))
        [event] = await power_events(bus, unreachable.system_id, 1)
    assert (event.action, event.state, event.rack_id) == (PowerAction.CYCLE, PowerState.UNKNOWN, None)
    assert event.error == "no healthy rack reaches BMC 10.0.0.21"
    async with database(database_dsn) as conn:
        assert (
            await conn.fetchval("SELECT count(*) FROM events WHERE subject = $1", f"events.power.{manual.system_id}")
            == 0
        )


async def credentials_of(conn: asyncpg.Connection, system_id: str) -> OAuthCredentials:
    """The machine's current metadata token, as its kernel command line hands it over."""
    row = await conn.fetchrow(
        "SELECT consumer_key, token_key, token_secret FROM metadata_tokens WHERE system_id = $1 AND revoked_at IS NULL",
        system_id,
    )
    assert row is not None
    return OAuthCredentials(**dict(row))


async def commission_run(bus: Bus, conn: asyncpg.Connection, system_id: str, *results: ScriptResult) -> None:
    """One commissioning run as the machine makes it: commissioned, results posted, then OK."""
    await act(bus, system_id, MachineAction.COMMISSION, commissioning_timeout_s=600)
    credentials = await credentials_of(conn, system_id)
    for status in (SignalStatus.WORKING, SignalStatus.OK):
        signal = MetadataSignal(
            credentials=credentials, status=status, results=list(results) if status is SignalStatus.WORKING else []
        )
        await bus.request(METADATA_SIGNAL, signal, timeout=5)


async def test_inventory_and_results_are_what_commissioning_stored_newest_run_last(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    inventory = ScriptResult(
        name="metalbus-inventory", exit_status=0, stdout=INVENTORY.model_dump_json(), runtime_s=0.4
    )
    lldp = ScriptResult(name="metalbus-lldp", exit_status=0, stdout="", result={"neighbours": 1}, runtime_s=0.1)
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        query = MachineQuery(system_id=machine.system_id)
        with pytest.raises(NotFound, match="has no inventory yet"):
            await bus.request(MACHINE_INVENTORY, query, timeout=5)
        before = await bus.request(MACHINE_RESULTS, query, timeout=5)
        for unknown_subject in (MACHINE_INVENTORY, MACHINE_RESULTS):
            with pytest.raises(NotFound, match="no machine zzzzzz"):
                await bus.request(unknown_subject, MachineQuery(system_id="zzzzzz"), timeout=5)
        await commission_run(bus, conn, machine.system_id, inventory, lldp)
        second_run = inventory.model_copy(update={"runtime_s": 0.7})
        await commission_run(bus, conn, machine.system_id, second_run)
        stored_inventory = await bus.request(MACHINE_INVENTORY, query, timeout=5)
        results = await bus.request(MACHINE_RESULTS, query, timeout=5)
        status = await conn.fetchval("SELECT status FROM machines WHERE system_id = $1", machine.system_id)
    assert status == "ready"
    assert before.results == []
    assert stored_inventory == INVENTORY
    assert results.system_id == machine.system_id
    assert [(r.name, r.exit_status, r.runtime_s) for r in results.results] == [
        ("metalbus-inventory", 0, 0.4),
        ("metalbus-lldp", 0, 0.1),
        ("metalbus-inventory", 0, 0.7),
    ]
    assert results.results[1].result == {"neighbours": 1} and results.results[0].result is None
    assert results.results[0].stdout == INVENTORY.model_dump_json()
    recorded = [r.recorded_at for r in results.results]
    assert recorded == sorted(recorded)


async def test_an_update_and_a_deletion_are_machine_events_that_keep_the_status(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    """Racks cache what a machine boots per MAC and drop it on the machine's events: a new boot MAC or a deleted
    machine must reach them as events too."""
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:01"), timeout=5)
        await update(bus, machine.system_id, boot_mac="52:54:00:00:00:09", hostname="renamed")
        await bus.request(MACHINE_DELETE, MachineQuery(system_id=machine.system_id), timeout=5)
        events = await machine_events(bus, machine.system_id, 3)

    assert [(e.from_status, e.to_status, e.reason) for e in events] == [
        (None, MachineStatus.NEW, None),
        (MachineStatus.NEW, MachineStatus.NEW, "updated: boot_mac, hostname"),
        (MachineStatus.NEW, MachineStatus.NEW, "deleted"),
    ]
    assert all(e.action is None for e in events)
