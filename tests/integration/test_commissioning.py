"""Commissioning against a real region, NATS and PostgreSQL, with the test acting as the racks' rack-power.

Covers the commission action (token, boot purpose, deadline, power-on with the BMC secrets), the choice of rack
(dead, unreachable, silent and mute racks are passed over), power failures, abort, and the timeout reaper with
two replicas.
"""

import asyncio
from typing import Any

import asyncpg
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from metalbus.bus import Bus
from metalbus.contracts.errors import Forbidden, MetalbusError
from metalbus.contracts.machines import MachineAction, MachineCreate, MachineQuery, MachineStatus
from metalbus.contracts.power import PowerAction, PowerCommand, PowerEvent, PowerResult, PowerState
from metalbus.contracts.racks import RackServiceAnnouncement, RackServiceKind
from metalbus.subjects import MACHINE_CREATE, MACHINE_GET, RACK_ANNOUNCE, RACK_POWER_COMMAND
from tests.conftest import NatsServer
from tests.integration.test_machines import (
    BMC_SECRET,
    act,
    database,
    ipmi_machine,
    machine_events,
    recorded_transitions,
    region,
    stream_events,
)
from tests.integration.test_region import eventually

S = MachineStatus
BMC_NETWORK = "10.0.0.2/24"  # the BMC of ipmi_machine() is 10.0.0.21
ELSEWHERE = "192.168.5.2/24"


class FakeRackPower:
    """Plays one rack's rack-power: records every command, answers with the state reached or a refusal."""

    def __init__(self, rack_id: str, refusal: MetalbusError | None = None) -> None:
        self.rack_id = rack_id
        self.refusal = refusal
        self.commands: list[PowerCommand] = []

    async def serve(self, bus: Bus) -> None:
        self.subscription = await bus.serve(
            RACK_POWER_COMMAND, self.answer, subscribe_to=RACK_POWER_COMMAND.format(rack_id=self.rack_id)
        )

    async def answer(self, command: PowerCommand) -> PowerResult:
        self.commands.append(command)
        if self.refusal is not None:
            raise self.refusal
        state = PowerState.OFF if command.action is PowerAction.OFF else PowerState.ON
        return PowerResult(system_id=command.system_id, state=state)

    @property
    def actions(self) -> list[PowerAction]:
        return [command.action for command in self.commands]


async def add_power_rack(bus: Bus, dsn: str, rack_id: str, *interfaces: str, stale: bool = False) -> None:
    """The rack's rack-power announces itself; its interfaces (and, for a dead rack, an old last_seen) are set."""
    announcement = RackServiceAnnouncement(
        rack_id=rack_id, service=RackServiceKind.POWER, hostname=f"host-{rack_id}", version="0.1.0",
        heartbeat_interval_s=5,
    )  # fmt: skip
    await bus.request(RACK_ANNOUNCE, announcement, timeout=5)
    async with database(dsn) as conn:
        await conn.execute(
            """
            UPDATE rack_services
               SET interfaces = $2::inet[],
                   last_seen = CASE WHEN $3 THEN now() - interval '1 hour' ELSE last_seen END
             WHERE rack_id = $1 AND service = 'rack-power'
            """,
            rack_id,
            list(interfaces),
            stale,
        )


async def power_events(bus: Bus, system_id: str, expected: int) -> list[PowerEvent]:
    return [PowerEvent.from_json_bytes(body) for body in await stream_events(bus, "power", system_id, expected)]


async def machine_row(conn: asyncpg.Connection, system_id: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        SELECT status, boot_purpose, commissioning_deadline,
               extract(epoch FROM commissioning_deadline - status_changed_at) AS timeout_s,
               (SELECT count(*) FROM metadata_tokens t WHERE t.system_id = m.system_id) AS tokens,
               (SELECT count(*) FROM metadata_tokens t WHERE t.system_id = m.system_id AND revoked_at IS NULL)
                   AS valid_tokens
          FROM machines m WHERE system_id = $1
        """,
        system_id,
    )
    assert row is not None
    return row


async def test_commission_issues_a_token_boots_commissioning_and_powers_on_through_the_rack_with_the_secrets(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    rack = FakeRackPower("rack-a")
    with capture_logs() as logs:
        async with region(nats_server, database_dsn, bus):
            await add_power_rack(bus, database_dsn, "rack-a", ELSEWHERE, BMC_NETWORK)
            await rack.serve(bus)
            machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
            request: dict[str, Any] = {"commissioning_timeout_s": 600, "idempotency_key": "commission-0001"}
            commissioning = await act(bus, machine.system_id, MachineAction.COMMISSION, **request)
            repeated = await act(bus, machine.system_id, MachineAction.COMMISSION, **request)
            [power] = await power_events(bus, machine.system_id, 1)
            events = await machine_events(bus, machine.system_id, 2)
            after = await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id), timeout=5)
    assert commissioning.status == S.COMMISSIONING
    assert (machine.power_state, after.power_state) == (PowerState.UNKNOWN, PowerState.ON)
    assert after.power_state_changed_at is not None
    assert repeated == commissioning  # the repeat is answered, not applied: one power-on, one transition
    [command] = rack.commands
    assert (command.system_id, command.action, command.power_type) == (machine.system_id, PowerAction.ON, "ipmi")
    assert command.secrets == {"password": BMC_SECRET}
    assert command.parameters == {"address": "10.0.0.21", "port": 623, "username": "admin"}
    assert command.idempotency_key
    assert command.boot_from_network  # commissioning boots from the network, whatever the BIOS order says
    assert (power.action, power.state, power.rack_id, power.error) == (PowerAction.ON, PowerState.ON, "rack-a", None)
    assert [(e.from_status, e.to_status) for e in events] == [(None, S.NEW), (S.NEW, S.COMMISSIONING)]
    assert BMC_SECRET not in repr(logs)
    assert any(entry["event"] == "power.done" for entry in logs)
    async with database(database_dsn) as conn:
        row = await machine_row(conn, machine.system_id)
    assert (row["status"], row["boot_purpose"], row["valid_tokens"]) == ("commissioning", "commissioning", 1)
    assert row["commissioning_deadline"] == commissioning.commissioning_deadline
    assert 599 <= row["timeout_s"] <= 601


async def test_commission_without_a_timeout_takes_the_region_setting(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        async with database(database_dsn) as conn:
            await conn.execute("UPDATE region_settings SET value = '900' WHERE name = 'commissioning_timeout_s'")
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:09"), timeout=5)
        commissioning = await act(bus, machine.system_id, MachineAction.COMMISSION)
    assert commissioning.status == S.COMMISSIONING  # manual power: the operator switches it on
    async with database(database_dsn) as conn:
        assert 899 <= (await machine_row(conn, machine.system_id))["timeout_s"] <= 901


async def test_rack_choice_skips_a_dead_rack_and_a_rack_off_the_bmc_network(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    racks = {rack_id: FakeRackPower(rack_id) for rack_id in ("rack-dead", "rack-far", "rack-live")}
    async with region(nats_server, database_dsn, bus):
        await add_power_rack(bus, database_dsn, "rack-dead", BMC_NETWORK, stale=True)
        await add_power_rack(bus, database_dsn, "rack-far", ELSEWHERE)
        await add_power_rack(bus, database_dsn, "rack-live", BMC_NETWORK)
        for rack in racks.values():
            await rack.serve(bus)
        for number in range(3):
            machine = await bus.request(MACHINE_CREATE, ipmi_machine(mac=f"52:54:00:00:00:0{number}"), timeout=5)
            commissioning = await act(bus, machine.system_id, MachineAction.COMMISSION)
            assert commissioning.status == S.COMMISSIONING
    assert racks["rack-live"].actions == [PowerAction.ON] * 3
    assert racks["rack-dead"].commands == racks["rack-far"].commands == []


async def test_racks_that_do_not_answer_are_passed_over_for_the_next_candidate(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    live = FakeRackPower("rack-live")
    heard_by_mute: list[Msg] = []

    async def never_answer(msg: Msg) -> None:
        heard_by_mute.append(msg)

    async with region(nats_server, database_dsn, bus, power_request_timeout_s=0.5):
        # rack-gone is healthy on paper but nothing serves it; rack-mute listens and never answers.
        for rack_id in ("rack-gone", "rack-mute", "rack-live"):
            await add_power_rack(bus, database_dsn, rack_id, BMC_NETWORK)
        await live.serve(bus)
        await bus.client.subscribe(RACK_POWER_COMMAND.format(rack_id="rack-mute"), cb=never_answer)
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        # Each rack tried goes to the back of the rotation, so these three operations try every rack.
        first = await act(bus, machine.system_id, MachineAction.COMMISSION)
        aborted = await act(bus, machine.system_id, MachineAction.ABORT)
        second = await act(bus, machine.system_id, MachineAction.COMMISSION)
        powered = await power_events(bus, machine.system_id, 3)
    assert (first.status, aborted.status, second.status) == (S.COMMISSIONING, S.NEW, S.COMMISSIONING)
    assert aborted.status_reason is None
    assert live.actions == [PowerAction.ON, PowerAction.OFF, PowerAction.ON]
    assert heard_by_mute, "the mute rack was tried"
    assert [(e.action, e.rack_id, e.error) for e in powered] == [
        (PowerAction.ON, "rack-live", None),
        (PowerAction.OFF, "rack-live", None),
        (PowerAction.ON, "rack-live", None),
    ]


async def test_commission_with_no_rack_reaching_the_bmc_fails_and_says_why(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    elsewhere = FakeRackPower("rack-far")
    async with region(nats_server, database_dsn, bus):
        await add_power_rack(bus, database_dsn, "rack-far", ELSEWHERE)
        await elsewhere.serve(bus)
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        failed = await act(bus, machine.system_id, MachineAction.COMMISSION)
        events = await machine_events(bus, machine.system_id, 3)
        [power] = await power_events(bus, machine.system_id, 1)
    reason = "power on failed: no healthy rack reaches BMC 10.0.0.21"
    assert (failed.status, failed.status_reason, failed.commissioning_deadline) == (
        S.FAILED_COMMISSIONING,
        reason,
        None,
    )
    assert [(e.action, e.to_status, e.reason) for e in events[1:]] == [
        (MachineAction.COMMISSION, S.COMMISSIONING, None),
        (MachineAction.COMMISSIONING_FAILED, S.FAILED_COMMISSIONING, reason),
    ]
    assert (power.state, power.rack_id, power.error) == (
        PowerState.UNKNOWN,
        None,
        "no healthy rack reaches BMC 10.0.0.21",
    )
    assert elsewhere.commands == []
    async with database(database_dsn) as conn:
        row = await machine_row(conn, machine.system_id)
    assert (row["status"], row["boot_purpose"], row["tokens"], row["valid_tokens"]) == (
        "failed_commissioning", "local", 1, 0,
    )  # fmt: skip


async def test_a_bmc_refusal_reported_by_the_rack_fails_commissioning_with_the_racks_words(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    rack = FakeRackPower("rack-a", refusal=Forbidden("BMC rejected the credentials"))
    async with region(nats_server, database_dsn, bus):
        await add_power_rack(bus, database_dsn, "rack-a", BMC_NETWORK)
        await rack.serve(bus)
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        failed = await act(bus, machine.system_id, MachineAction.COMMISSION)
    assert failed.status == S.FAILED_COMMISSIONING
    assert failed.status_reason == "power on failed: rack rack-a refused: BMC rejected the credentials"
    assert rack.actions == [PowerAction.ON]


async def test_abort_returns_to_the_previous_status_powers_off_and_revokes_the_token(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    rack = FakeRackPower("rack-a")
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        # No rack yet: the first commissioning fails, so the machine's previous status is failed_commissioning.
        assert (await act(bus, machine.system_id, MachineAction.COMMISSION)).status == S.FAILED_COMMISSIONING
        await add_power_rack(bus, database_dsn, "rack-a", BMC_NETWORK)
        await rack.serve(bus)
        assert (await act(bus, machine.system_id, MachineAction.COMMISSION)).status == S.COMMISSIONING
        async with database(database_dsn) as conn:
            assert (await machine_row(conn, machine.system_id))["valid_tokens"] == 1
        aborted = await act(bus, machine.system_id, MachineAction.ABORT, reason="operator changed their mind")
        events = await machine_events(bus, machine.system_id, 5)
    assert (aborted.status, aborted.status_reason) == (S.FAILED_COMMISSIONING, "operator changed their mind")
    assert aborted.commissioning_deadline is None
    assert rack.actions == [PowerAction.ON, PowerAction.OFF]
    assert (events[-1].action, events[-1].from_status, events[-1].to_status) == (
        MachineAction.ABORT, S.COMMISSIONING, S.FAILED_COMMISSIONING,
    )  # fmt: skip
    async with database(database_dsn) as conn:
        row = await machine_row(conn, machine.system_id)
    assert (row["status"], row["boot_purpose"], row["tokens"], row["valid_tokens"]) == (
        "failed_commissioning", "local", 2, 0,
    )  # fmt: skip


async def test_abort_whose_power_off_fails_still_aborts_and_records_why(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    rack = FakeRackPower("rack-a")
    async with region(nats_server, database_dsn, bus, power_request_timeout_s=0.5):
        await add_power_rack(bus, database_dsn, "rack-a", BMC_NETWORK)
        await rack.serve(bus)
        machine = await bus.request(MACHINE_CREATE, ipmi_machine(), timeout=5)
        await act(bus, machine.system_id, MachineAction.COMMISSION)
        await rack.subscription.unsubscribe()  # the rack goes away before the abort
        aborted = await act(bus, machine.system_id, MachineAction.ABORT, reason="wrong machine")
        [_, power_off] = await power_events(bus, machine.system_id, 2)
    assert aborted.status == S.NEW
    assert aborted.status_reason == "wrong machine; power off failed: no rack answered (rack-a: unavailable)"
    assert (power_off.action, power_off.state, power_off.error) == (
        PowerAction.OFF, PowerState.UNKNOWN, "no rack answered (rack-a: unavailable)",
    )  # fmt: skip


async def test_marking_a_commissioning_machine_broken_ends_its_commissioning(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus):
        machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:00:09"), timeout=5)
        await act(bus, machine.system_id, MachineAction.COMMISSION)
        broken = await act(bus, machine.system_id, MachineAction.MARK_BROKEN, reason="smoke")
        fixed = await act(bus, machine.system_id, MachineAction.MARK_FIXED)
    assert (broken.status, broken.status_reason, broken.commissioning_deadline) == (S.BROKEN, "smoke", None)
    assert fixed.status == S.NEW  # broken while commissioning: back to NEW, not to commissioning
    async with database(database_dsn) as conn:
        row = await machine_row(conn, machine.system_id)
    assert (row["boot_purpose"], row["tokens"], row["valid_tokens"]) == ("local", 1, 0)


async def test_reaper_fails_overdue_machines_exactly_once_with_two_replicas_running(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    fast: dict[str, Any] = {"reaper_interval_s": 0.05}
    async with (
        region(nats_server, database_dsn, bus, "r1", **fast),
        region(nats_server, database_dsn, bus, "r2", **fast),
    ):
        overdue = []
        for number in range(4):  # manual power: nothing will ever answer for these machines
            machine = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac=f"52:54:00:00:01:0{number}"), timeout=5)
            await act(bus, machine.system_id, MachineAction.COMMISSION, commissioning_timeout_s=0.5)
            overdue.append(machine.system_id)
        patient = await bus.request(MACHINE_CREATE, MachineCreate(boot_mac="52:54:00:00:02:00"), timeout=5)
        await act(bus, patient.system_id, MachineAction.COMMISSION, commissioning_timeout_s=600)

        async def statuses() -> list[str]:
            async with database(database_dsn) as conn:
                return [(await machine_row(conn, system_id))["status"] for system_id in overdue]

        await eventually(statuses, lambda found: found == ["failed_commissioning"] * 4, timeout=10)
        await asyncio.sleep(0.5)  # ten more reaper rounds in each replica
        streamed = {system_id: await machine_events(bus, system_id, 3) for system_id in overdue}
    async with database(database_dsn) as conn:
        for system_id in overdue:
            assert await recorded_transitions(conn, system_id) == [
                (None, "new"), ("new", "commissioning"), ("commissioning", "failed_commissioning"),
            ]  # fmt: skip
            row = await machine_row(conn, system_id)
            assert (row["boot_purpose"], row["valid_tokens"], row["commissioning_deadline"]) == ("local", 0, None)
        assert (await machine_row(conn, patient.system_id))["status"] == "commissioning"
    for events in streamed.values():
        timed_out = events[-1]
        assert (timed_out.action, timed_out.to_status) == (MachineAction.COMMISSIONING_FAILED, S.FAILED_COMMISSIONING)
        assert timed_out.reason is not None and timed_out.reason.startswith("commissioning timed out")
