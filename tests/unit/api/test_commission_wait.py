"""Commission with wait: answer when the machine leaves commissioning, or when the wait is over — never later."""

from datetime import UTC, datetime

from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import Machine, MachineStatus, PowerType
from metalbus_api.commission_wait import wait_until_settled

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


def machine(status: MachineStatus) -> Machine:
    return Machine(
        system_id="x7kq2m",
        hostname="node-1",
        status=status,
        architecture=Architecture.AMD64_BIOS,
        boot_mac="52:54:00:12:34:56",
        power_type=PowerType.MANUAL,
        power_parameters={},
        created_at=T0,
        status_changed_at=T0,
    )


class Scenario:
    """A fake clock that moves only when the wait waits, and the statuses successive reads return."""

    def __init__(self, statuses: list[MachineStatus], *, change_after_s: float | None = None) -> None:
        self.now = 0.0
        self.statuses = statuses
        self.waits: list[float] = []
        self.reads = 0
        self.change_after_s = change_after_s

    def clock(self) -> float:
        return self.now

    async def next_change(self, timeout_s: float) -> None:
        self.waits.append(timeout_s)
        self.now += min(timeout_s, self.change_after_s) if self.change_after_s else timeout_s

    async def read_machine(self) -> Machine:
        self.reads += 1
        return machine(self.statuses.pop(0) if self.statuses else MachineStatus.COMMISSIONING)


async def test_a_machine_not_commissioning_is_answered_at_once() -> None:
    scenario = Scenario([])
    result = await wait_until_settled(
        machine(MachineStatus.FAILED_COMMISSIONING),
        read_machine=scenario.read_machine,
        next_change=scenario.next_change,
        timeout_s=60,
        poll_s=5,
        clock=scenario.clock,
    )
    assert result.status is MachineStatus.FAILED_COMMISSIONING
    assert (scenario.waits, scenario.reads) == ([], 0)


async def test_the_answer_comes_when_an_event_shows_the_machine_ready() -> None:
    scenario = Scenario([MachineStatus.COMMISSIONING, MachineStatus.READY], change_after_s=0.5)
    result = await wait_until_settled(
        machine(MachineStatus.COMMISSIONING),
        read_machine=scenario.read_machine,
        next_change=scenario.next_change,
        timeout_s=60,
        poll_s=5,
        clock=scenario.clock,
    )
    assert result.status is MachineStatus.READY
    assert scenario.reads == 2
    assert scenario.now == 1.0


async def test_a_machine_still_commissioning_is_answered_when_the_wait_is_over() -> None:
    scenario = Scenario([])
    result = await wait_until_settled(
        machine(MachineStatus.COMMISSIONING),
        read_machine=scenario.read_machine,
        next_change=scenario.next_change,
        timeout_s=12,
        poll_s=5,
        clock=scenario.clock,
    )
    assert result.status is MachineStatus.COMMISSIONING
    assert scenario.waits == [5, 5, 2]  # polls every poll_s; the last wait ends exactly at the timeout
    assert scenario.now == 12
