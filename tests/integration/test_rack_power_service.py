"""rack-power as a service on NATS, against ipmi_sim BMCs: commands for this rack, idempotency keys, typed errors,
a power cycle through a real region whose logs and events never hold the password, and polling that reports a
change once."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
import structlog
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.errors import BadRequest, Forbidden, Unavailable
from metalbus.contracts.machines import (
    Machine,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineQuery,
    MachineStatus,
    PowerType,
)
from metalbus.contracts.power import MachinePowerRequest, PowerAction, PowerCommand, PowerEvent, PowerState
from metalbus.subjects import (
    EVENTS_STREAM,
    MACHINE_ACTION,
    MACHINE_CREATE,
    MACHINE_GET,
    MACHINE_POWER,
    RACK_POWER_COMMAND,
)
from metalbus_rack_power.commands import PowerCommands
from metalbus_rack_power.service import run_rack_power
from metalbus_rack_power.settings import RackPowerSettings
from tests.conftest import NatsServer
from tests.integration.ipmi_sim_bmc import SimulatedBmc, simulated_bmcs
from tests.integration.test_region import eventually, running_region

PASSWORD = "svc-Pa55word-5be2c9"
RACK = "rack-svc"


@asynccontextmanager
async def running_rack_power(nats_server: NatsServer, **overrides: Any) -> AsyncIterator[PowerCommands]:
    defaults: dict[str, Any] = {
        "heartbeat_interval_s": 0.5,
        "poll_interval_s": 3600,
        "interfaces": [IPv4Interface("127.0.0.1/8")],
        "request_timeout_s": 2,
        "ipmi_timeout_s": 5,
        "retries": 0,
    }
    settings = RackPowerSettings(nats_url=nats_server.url, rack_id=RACK, **(defaults | overrides))
    stop = asyncio.Event()
    ready: asyncio.Future[PowerCommands] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_rack_power(settings, stop, commands_ready=ready))
    try:
        yield await asyncio.wait_for(ready, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


def command(sim: SimulatedBmc, action: PowerAction, key: str | None = None, password: str = PASSWORD) -> PowerCommand:
    return PowerCommand(
        system_id="abc123",
        action=action,
        power_type=PowerType.IPMI,
        parameters=sim.parameters,
        secrets={"password": password},
        idempotency_key=key,
    )


async def send(bus: Bus, message: PowerCommand) -> PowerState:
    return (await bus.request(RACK_POWER_COMMAND, message, timeout=15, rack_id=RACK)).state


@pytest.fixture
def sims(tmp_path: Path) -> Any:
    with simulated_bmcs(tmp_path, 1, PASSWORD) as running:
        yield running


async def test_a_repeated_idempotency_key_answers_without_acting_again(
    nats_server: NatsServer, bus: Bus, sims: list[SimulatedBmc]
) -> None:
    sim = sims[0]
    async with running_rack_power(nats_server) as commands:
        first, racing = await asyncio.gather(
            send(bus, command(sim, PowerAction.ON, "power-abc123-on-1")),
            send(bus, command(sim, PowerAction.ON, "power-abc123-on-1")),
        )
        assert first is racing is PowerState.ON
        assert sim.machine_pid() is not None
        assert "Down/Off" in sim.ipmitool("chassis", "power", "off")  # someone else turns it off meanwhile

        assert await send(bus, command(sim, PowerAction.ON, "power-abc123-on-1")) is PowerState.ON
        assert sim.machine_pid() is None, "the repeated key did not power the machine on again"
        assert commands.acted == 1
        assert await send(bus, command(sim, PowerAction.ON, "power-abc123-on-2")) is PowerState.ON
        assert sim.machine_pid() is not None, "a new key acts"
        assert await send(bus, command(sim, PowerAction.QUERY)) is PowerState.ON


async def test_bmc_and_driver_errors_reach_the_requester_typed(
    nats_server: NatsServer, bus: Bus, sims: list[SimulatedBmc]
) -> None:
    async with running_rack_power(nats_server):
        with pytest.raises(Forbidden, match="refused the credentials"):
            await send(bus, command(sims[0], PowerAction.ON, password="wrong"))
        manual = PowerCommand(system_id="abc123", action=PowerAction.ON, power_type=PowerType.MANUAL)
        with pytest.raises(BadRequest, match="manual"):
            await send(bus, manual)
        assert await send(bus, manual.model_copy(update={"action": PowerAction.QUERY})) is PowerState.UNKNOWN
        no_address = PowerCommand(system_id="abc123", action=PowerAction.QUERY, power_type=PowerType.REDFISH)
        with pytest.raises(BadRequest, match="need an 'address'"):
            await send(bus, no_address)
    with pytest.raises(Unavailable):  # the rack is gone: the region would try another one
        await send(bus, command(sims[0], PowerAction.QUERY))


async def stream_power_events(bus: Bus, system_id: str) -> list[PowerEvent]:
    """Every power event of the machine in the stream, in order (read until 0.5 s pass without one)."""
    subscription = await bus.client.jetstream().subscribe(
        f"events.power.{system_id}", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    bodies: list[bytes] = []
    try:
        for _ in range(1000):
            try:
                bodies.append((await subscription.next_msg(timeout=0.5)).data)
            except nats.errors.TimeoutError:
                break
    finally:
        await subscription.unsubscribe()
    return [PowerEvent.from_json_bytes(body) for body in bodies]


async def create_machine(bus: Bus, sim: SimulatedBmc, mac: str, password: str = PASSWORD) -> Machine:
    create = MachineCreate(
        boot_mac=mac, power_type=PowerType.IPMI, power_parameters=sim.parameters, power_secrets={"password": password}
    )
    return await bus.request(MACHINE_CREATE, create, timeout=10)


async def power_through_region(bus: Bus, system_id: str, action: PowerAction) -> PowerState:
    request = MachinePowerRequest(system_id=system_id, action=action)
    return (await bus.request(MACHINE_POWER, request, timeout=20)).state


async def test_no_log_line_or_event_of_a_power_cycle_holds_the_password(
    nats_server: NatsServer, database_dsn: str, bus: Bus, sims: list[SimulatedBmc], caplog: pytest.LogCaptureFixture
) -> None:
    sim = sims[0]
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as structured:
        async with running_region(nats_server, database_dsn, "r1"), running_rack_power(nats_server):
            good = await eventually(lambda: create_machine(bus, sim, "52:54:00:00:00:01"), lambda _: True)
            bad = await create_machine(bus, sim, "52:54:00:00:00:02", password="wrong-" + PASSWORD)
            await eventually(lambda: power_through_region(bus, good.system_id, PowerAction.QUERY), lambda _: True)
            assert await power_through_region(bus, good.system_id, PowerAction.CYCLE) is PowerState.ON
            assert await power_through_region(bus, good.system_id, PowerAction.OFF) is PowerState.OFF
            with pytest.raises(Unavailable, match="refused the credentials"):
                await power_through_region(bus, bad.system_id, PowerAction.CYCLE)
            events = await stream_power_events(bus, good.system_id)
            failed = await stream_power_events(bus, bad.system_id)
    # (queries sent before the rack was known failed with "no healthy rack": they are events too)
    succeeded = [(event.action, event.state) for event in events if event.error is None]
    assert succeeded == [(PowerAction.QUERY, PowerState.OFF), (PowerAction.CYCLE, PowerState.ON),
                         (PowerAction.OFF, PowerState.OFF)]  # fmt: skip
    assert len(failed) == 1 and failed[0].error is not None and "refused the credentials" in failed[0].error
    assert any(entry.get("event") == "power.done" for entry in structured), "the rack's logs were captured"
    everything = [repr(entry) for entry in structured] + [record.getMessage() for record in caplog.records]
    everything += [caplog.text] + [event.model_dump_json() for event in events + failed]
    assert not [text for text in everything if PASSWORD in text]


async def test_polling_reports_a_change_once(
    nats_server: NatsServer, database_dsn: str, bus: Bus, sims: list[SimulatedBmc]
) -> None:
    sim = sims[0]
    async with running_region(nats_server, database_dsn, "r1"):
        machine = await eventually(lambda: create_machine(bus, sim, "52:54:00:00:00:03"), lambda _: True)
        conn = await asyncpg.connect(database_dsn)
        try:

            async def recorded_state() -> str:
                return str(
                    await conn.fetchval("SELECT power_state FROM machines WHERE system_id = $1", machine.system_id)
                )

            assert await recorded_state() == "unknown"
            async with running_rack_power(nats_server, poll_interval_s=0.2):
                await eventually(recorded_state, lambda state: state == "off")
                assert "Up/On" in sim.ipmitool("chassis", "power", "on")
                await eventually(recorded_state, lambda state: state == "on")
                await asyncio.sleep(1.0)  # several more rounds: nothing changed, nothing reported
        finally:
            await conn.close()
        events = await stream_power_events(bus, machine.system_id)
    assert [(event.action, event.state, event.rack_id) for event in events] == [
        (PowerAction.QUERY, PowerState.OFF, RACK),
        (PowerAction.QUERY, PowerState.ON, RACK),
    ]


async def test_commissioning_powers_on_with_pxe_and_a_refused_power_on_fails_it_with_the_reason(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    with simulated_bmcs(tmp_path / "bmcs", 2, PASSWORD) as (sim, other):
        async with running_region(nats_server, database_dsn, "r1"), running_rack_power(nats_server):
            good = await eventually(lambda: create_machine(bus, sim, "52:54:00:00:00:04"), lambda _: True)
            bad = await create_machine(bus, other, "52:54:00:00:00:05", password="wrong")
            await eventually(lambda: power_through_region(bus, good.system_id, PowerAction.QUERY), lambda _: True)
            for machine in (good, bad):
                commission = MachineActionRequest(system_id=machine.system_id, action=MachineAction.COMMISSION)
                await bus.request(MACHINE_ACTION, commission, timeout=30)

            async def status_of(system_id: str) -> Machine:
                return await bus.request(MACHINE_GET, MachineQuery(system_id=system_id), timeout=5)

            commissioning = await eventually(lambda: status_of(good.system_id), lambda m: m.status.value != "new")
            failed = await eventually(
                lambda: status_of(bad.system_id), lambda m: m.status is MachineStatus.FAILED_COMMISSIONING
            )
        assert sim.machine_pid() is not None, "the commissioning machine was powered on"
        assert sim.boot_device() == "pxe", "its next boot was set to PXE before the power-on"
    assert commissioning.status is MachineStatus.COMMISSIONING
    assert failed.status_reason is not None and "refused the credentials" in failed.status_reason
    assert other.boot_device() is None
