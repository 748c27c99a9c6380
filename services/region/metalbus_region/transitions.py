"""Apply a lifecycle action to a machine row: lock it, walk the table, write the new status and its event."""

from datetime import datetime

from metalbus.contracts.errors import NotFound
from metalbus.contracts.machines import MachineAction, MachineEvent, MachineStatus
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_MACHINE
from metalbus_region.lifecycle import next_status
from metalbus_region.outbox import record_event


async def apply_action(
    conn: DbConnection,
    system_id: str,
    action: MachineAction,
    *,
    reason: str | None = None,
    commissioning_deadline: datetime | None = None,
) -> MachineEvent:
    """Must run inside the caller's transaction. Raises NotFound or InvalidTransition; records the event.

    ``commissioning_deadline`` is required when the action leads to COMMISSIONING (the region's reaper fails the
    machine if it is still commissioning then) and is cleared on every other status.
    """
    row = await conn.fetchrow("SELECT status, previous_status FROM machines WHERE system_id = $1 FOR UPDATE", system_id)
    if row is None:
        raise NotFound(f"no machine {system_id}")
    current = MachineStatus(row["status"])
    previous = MachineStatus(row["previous_status"]) if row["previous_status"] else None
    target = next_status(current, action, previous)
    if target is MachineStatus.COMMISSIONING and commissioning_deadline is None:
        raise ValueError("entering commissioning needs a deadline")
    await conn.execute(
        """
        UPDATE machines
           SET status = $2, previous_status = $3, status_reason = $4, status_changed_at = now(),
               commissioning_deadline = $5
         WHERE system_id = $1
        """,
        system_id,
        target.value,
        current.value,
        reason,
        commissioning_deadline if target is MachineStatus.COMMISSIONING else None,
    )
    return await record_machine_event(
        conn, system_id, action=action, from_status=current, to_status=target, reason=reason
    )


async def record_machine_event(
    conn: DbConnection,
    system_id: str,
    *,
    action: MachineAction | None,
    from_status: MachineStatus | None,
    to_status: MachineStatus,
    reason: str | None,
) -> MachineEvent:
    """Add ``events.machine.<system_id>`` to the outbox in the caller's transaction: a status change, a creation
    (no ``from_status``), or a change that keeps the status (an update, a deletion)."""
    return await record_event(
        conn,
        EVENT_MACHINE,
        lambda sequence, at: MachineEvent(
            sequence=sequence,
            system_id=system_id,
            action=action,
            from_status=from_status,
            to_status=to_status,
            reason=reason,
            at=at,
        ),
        system_id=system_id,
    )
