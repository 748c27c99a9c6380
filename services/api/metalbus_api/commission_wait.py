"""Commission with ``wait``: answer when the machine leaves COMMISSIONING, or when the wait is over.

The api listens on the machine's event subject (``events.machine.<system_id>``) from before it sends the action,
so no change is missed, and re-reads the machine after every event and at least every ``poll_s`` (events are a
wake-up call; the machine as the region reads it is the answer).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors

from metalbus.bus import Bus
from metalbus.contracts.errors import Unavailable
from metalbus.contracts.machines import Machine, MachineStatus
from metalbus.subjects import EVENT_MACHINE

# Wait up to the given seconds for the next change (returns early on one, quietly on none).
NextChange = Callable[[float], Awaitable[None]]


async def wait_until_settled(
    first: Machine,
    *,
    read_machine: Callable[[], Awaitable[Machine]],
    next_change: NextChange,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> Machine:
    """The machine once it is no longer commissioning, or as it is when ``timeout_s`` has passed."""
    deadline = clock() + timeout_s
    machine = first
    while machine.status is MachineStatus.COMMISSIONING:
        remaining = deadline - clock()
        if remaining <= 0:
            return machine
        await next_change(min(poll_s, remaining))
        machine = await read_machine()
    return machine


@contextlib.asynccontextmanager
async def machine_changes(bus: Bus, system_id: str) -> AsyncIterator[NextChange]:
    """Listen to one machine's events while the block runs; always unsubscribes. If NATS fails meanwhile,
    ``next_change`` just sleeps, and the caller's polling carries on."""
    try:
        subscription = await bus.client.subscribe(EVENT_MACHINE.format(system_id=system_id), pending_msgs_limit=64)
    except nats.errors.Error as error:
        raise Unavailable(f"cannot follow the events of machine {system_id}: {error!r}") from error

    async def next_change(timeout_s: float) -> None:
        try:
            await subscription.next_msg(timeout=timeout_s)
        except nats.errors.TimeoutError:
            return
        except nats.errors.Error:
            await asyncio.sleep(timeout_s)

    try:
        yield next_change
    finally:
        with contextlib.suppress(nats.errors.Error):
            await subscription.unsubscribe()
