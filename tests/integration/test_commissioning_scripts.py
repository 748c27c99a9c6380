"""Operators' commissioning scripts: kept in the region, chosen by a commission call, run by the real runner after
the inventory, each result stored; the first that fails fails commissioning with its output.

The runner (the user-data the region renders) runs under /bin/sh against a fixture /proc and /sys, posting through
the fake rack proxy of test_metadata (every post is a real METADATA_SIGNAL to a real region).
"""

from pathlib import Path

import asyncpg
import pytest
from pydantic import ValidationError

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, Conflict, NotFound
from metalbus.contracts.machines import (
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineQuery,
    MachineStatus,
    PowerType,
)
from metalbus.contracts.metadata import MetadataItem, SignalStatus
from metalbus.contracts.scripts import CommissioningScript, ScriptListQuery, ScriptQuery
from metalbus.subjects import MACHINE_ACTION, MACHINE_CREATE, MACHINE_RESULTS, SCRIPT_DELETE, SCRIPT_LIST, SCRIPT_SET
from tests.conftest import NatsServer
from tests.integration.test_boot import boot, credentials_on, database, region, set_boot_images
from tests.integration.test_metadata import FakeRackProxy, fixture_machine, machine_state, read, run_runner, runner_env

MAC = "52:54:00:aa:bb:01"  # the fixture machine's eth0
PASSING = CommissioningScript(
    name="disk-check", content="#!/bin/sh\necho 'disks: fine'\necho 'a warning' >&2\n", description="Checks disks."
)
FAILING = CommissioningScript(
    name="burn-in", content="#!/bin/sh\necho 'memory: 3 errors'\necho 'bad DIMM in slot 2' >&2\nexit 7\n"
)
NEVER_RUN = CommissioningScript(name="never-run", content="#!/bin/sh\ntouch /tmp/should-not-exist\n")


async def commission(bus: Bus, system_id: str, scripts: list[str]) -> MachineStatus:
    request = MachineActionRequest(system_id=system_id, action=MachineAction.COMMISSION, scripts=scripts)
    return (await bus.request(MACHINE_ACTION, request, timeout=10)).status


async def run_commissioning(
    bus: Bus, conn: asyncpg.Connection, tmp_path: Path, scripts: list[str]
) -> tuple[str, int, FakeRackProxy]:
    """Create a manual-power machine, commission it with ``scripts``, run its user-data as the machine would."""
    proc, sys = fixture_machine(tmp_path)
    proxy = FakeRackProxy(bus)
    machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac=MAC, power_type=PowerType.MANUAL), timeout=5)
    assert await commission(bus, machine.system_id, scripts) is MachineStatus.COMMISSIONING
    config = await boot(bus, MAC)
    (proc / "cmdline").write_text(config.kernel_command_line + "\n")
    (tmp_path / "user-data").write_text(await read(bus, credentials_on(config), MetadataItem.USER_DATA))
    async with proxy.serving() as url:
        status, _, _ = await run_runner(tmp_path / "user-data", env=runner_env(proc, sys, METALBUS_METADATA_URL=url))
    return machine.system_id, status, proxy


async def test_scripts_are_set_replaced_listed_and_deleted_by_name(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        await bus.request(SCRIPT_SET, FAILING, timeout=5)
        stored = await bus.request(SCRIPT_SET, PASSING, timeout=5)
        replaced = await bus.request(SCRIPT_SET, PASSING.model_copy(update={"timeout_s": 30}), timeout=5)
        listed = await bus.request(SCRIPT_LIST, ScriptListQuery(), timeout=5)
        deleted = await bus.request(SCRIPT_DELETE, ScriptQuery(name="burn-in"), timeout=5)
        with pytest.raises(NotFound):
            await bus.request(SCRIPT_DELETE, ScriptQuery(name="burn-in"), timeout=5)
        after = await bus.request(SCRIPT_LIST, ScriptListQuery(), timeout=5)

    assert (stored.content, stored.timeout_s, replaced.timeout_s) == (PASSING.content, 600, 30)
    assert stored.updated_at is not None and replaced.updated_at is not None
    assert [(s.name, s.timeout_s) for s in listed.scripts] == [("burn-in", 600), ("disk-check", 30)]
    assert deleted.content == FAILING.content
    assert [s.name for s in after.scripts] == ["disk-check"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"name": "x", "content": "echo no interpreter line\n"}, "interpreter line"),
        ({"name": "metalbus-inventory", "content": "#!/bin/sh\n"}, "region's own script"),
        ({"name": "Upper Case", "content": "#!/bin/sh\n"}, "pattern"),
        ({"name": "x", "content": "#!/bin/sh\n\x00"}, "NUL"),
    ],
)
def test_a_script_without_an_interpreter_line_or_with_a_reserved_or_bad_name_is_refused(
    fields: dict[str, str], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        CommissioningScript.model_validate(fields)


async def test_the_chosen_scripts_run_after_the_inventory_in_order_and_their_results_are_stored(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    second = PASSING.model_copy(update={"name": "second", "content": "#!/bin/sh\necho second\n"})
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        for script in (PASSING, second, NEVER_RUN):
            await bus.request(SCRIPT_SET, script, timeout=5)
        system_id, status, proxy = await run_commissioning(bus, conn, tmp_path, ["second", "disk-check"])
        state = await machine_state(conn, system_id)
        results = await bus.request(MACHINE_RESULTS, MachineQuery(system_id=system_id), timeout=5)

    assert status == 0
    assert [(p.status, [r.name for r in p.results]) for p in proxy.posted] == [
        (SignalStatus.WORKING, ["metalbus-inventory"]),
        (SignalStatus.WORKING, ["second"]),
        (SignalStatus.WORKING, ["disk-check"]),
        (SignalStatus.OK, []),
    ]
    assert state[0] == "ready"
    stored = {result.name: result for result in results.results}
    assert (stored["disk-check"].exit_status, stored["disk-check"].stdout, stored["disk-check"].stderr) == (
        0,
        "disks: fine\n",
        "a warning\n",
    )
    assert "never-run" not in stored


async def test_a_chosen_script_that_fails_fails_commissioning_with_its_output_and_stops_the_run(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        for script in (FAILING, PASSING):
            await bus.request(SCRIPT_SET, script, timeout=5)
        system_id, status, proxy = await run_commissioning(bus, conn, tmp_path, ["burn-in", "disk-check"])
        state = await machine_state(conn, system_id)
        results = await bus.request(MACHINE_RESULTS, MachineQuery(system_id=system_id), timeout=5)

    assert status == 7
    assert [[r.name for r in p.results] for p in proxy.posted] == [["metalbus-inventory"], ["burn-in"]]
    assert state[0] == "failed_commissioning"
    assert state[1] is not None and "burn-in" in state[1] and "7" in state[1]
    [failed] = [result for result in results.results if result.name == "burn-in"]
    assert (failed.exit_status, failed.stdout, failed.stderr) == (7, "memory: 3 errors\n", "bad DIMM in slot 2\n")


async def test_commissioning_with_an_unknown_script_is_refused_and_changes_nothing(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        created = MachineCreate(boot_mac=MAC, power_type=PowerType.MANUAL)
        machine = await bus.request(MACHINE_CREATE, created, timeout=5)
        with pytest.raises(BadRequest, match="no commissioning script nowhere"):
            await commission(bus, machine.system_id, ["nowhere"])
        state = await machine_state(conn, machine.system_id)

    assert state[0] == "new"


async def test_a_script_a_commissioning_machine_runs_cannot_be_deleted_until_it_is_done(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        await bus.request(SCRIPT_SET, PASSING, timeout=5)
        created = MachineCreate(boot_mac=MAC, power_type=PowerType.MANUAL)
        machine = await bus.request(MACHINE_CREATE, created, timeout=5)
        await commission(bus, machine.system_id, ["disk-check"])
        with pytest.raises(Conflict, match=machine.system_id):
            await bus.request(SCRIPT_DELETE, ScriptQuery(name="disk-check"), timeout=5)
        abort = MachineActionRequest(system_id=machine.system_id, action=MachineAction.ABORT)
        await bus.request(MACHINE_ACTION, abort, timeout=10)
        deleted = await bus.request(SCRIPT_DELETE, ScriptQuery(name="disk-check"), timeout=5)

    assert deleted.name == "disk-check"
