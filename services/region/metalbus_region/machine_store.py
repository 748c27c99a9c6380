"""Machine queries beside the lifecycle: read and list machines, boot purpose, power target, overdue claims.

Status changes are not made here (``transitions.apply_action`` is the only way); BMC secrets are read only by
``power_target``, whose result is handed to the power client and never returned or logged.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from metalbus.contracts.errors import NotFound
from metalbus.contracts.machines import BootPurpose, Machine, MachineStatus, PowerType
from metalbus.db.pool import DbConnection
from metalbus_region.machine_rows import MACHINE_COLUMNS, machine_from_row
from metalbus_region.tokens import revoke_tokens

DEFAULT_COMMISSIONING_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class PowerTarget:
    """What a rack needs to power one machine. ``secrets`` stay out of repr, hence out of logs."""

    system_id: str
    power_type: PowerType
    parameters: dict[str, Any]
    bmc_address: str | None
    secrets: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class OverdueMachine:
    system_id: str
    deadline: datetime


async def get_machine(conn: DbConnection, system_id: str) -> Machine:
    row = await conn.fetchrow(f"SELECT {MACHINE_COLUMNS} FROM machines WHERE system_id = $1", system_id)
    if row is None:
        raise NotFound(f"no machine {system_id}")
    return machine_from_row(row)


async def list_machines(conn: DbConnection, status: MachineStatus | None) -> list[Machine]:
    rows = await conn.fetch(
        f"""
        SELECT {MACHINE_COLUMNS} FROM machines
         WHERE $1::text IS NULL OR status = $1
         ORDER BY created_at, system_id
        """,
        status.value if status else None,
    )
    return [machine_from_row(row) for row in rows]


async def set_boot_purpose(conn: DbConnection, system_id: str, purpose: BootPurpose) -> None:
    await conn.execute("UPDATE machines SET boot_purpose = $2 WHERE system_id = $1", system_id, purpose.value)


async def leave_commissioning(conn: DbConnection, system_id: str) -> None:
    """A machine stopped commissioning (done, failed, aborted, broken): its metadata token goes, it boots
    locally again. Run in the transaction that moved it."""
    await revoke_tokens(conn, system_id)
    await set_boot_purpose(conn, system_id, BootPurpose.LOCAL)


async def commissioning_deadline(conn: DbConnection, timeout_s: float | None) -> datetime:
    """The database's now() plus the request's timeout, or the region setting 'commissioning_timeout_s'.

    The database clock sets deadlines and the reaper compares against it, so replicas' clocks never disagree.
    """
    if timeout_s is None:
        stored = await conn.fetchval("SELECT value::text FROM region_settings WHERE name = 'commissioning_timeout_s'")
        timeout_s = float(json.loads(stored)) if stored is not None else DEFAULT_COMMISSIONING_TIMEOUT_S
    deadline: datetime = await conn.fetchval("SELECT now() + make_interval(secs => $1)", timeout_s)
    return deadline


async def still_commissioning_until(conn: DbConnection, system_id: str, deadline: datetime) -> bool:
    """Lock the machine; True if it is still in the commissioning run that was given ``deadline``."""
    row = await conn.fetchrow(
        "SELECT status, commissioning_deadline FROM machines WHERE system_id = $1 FOR UPDATE", system_id
    )
    return (
        row is not None
        and row["status"] == MachineStatus.COMMISSIONING.value
        and row["commissioning_deadline"] == deadline
    )


async def note_status_reason(conn: DbConnection, system_id: str, status: MachineStatus, reason: str) -> None:
    """Replace the reason of the machine's current status (not the status), if it is still ``status``."""
    await conn.execute(
        "UPDATE machines SET status_reason = $3 WHERE system_id = $1 AND status = $2",
        system_id,
        status.value,
        reason,
    )


async def power_target(conn: DbConnection, system_id: str) -> PowerTarget:
    row = await conn.fetchrow(
        """
        SELECT m.power_type, m.power_parameters::text AS power_parameters, host(m.bmc_address) AS bmc_address,
               coalesce(s.secrets, '{}'::jsonb)::text AS secrets
          FROM machines m LEFT JOIN machine_power_secrets s USING (system_id)
         WHERE m.system_id = $1
        """,
        system_id,
    )
    if row is None:
        raise NotFound(f"no machine {system_id}")
    return PowerTarget(
        system_id=system_id,
        power_type=PowerType(row["power_type"]),
        parameters=json.loads(row["power_parameters"]),
        bmc_address=row["bmc_address"],
        secrets=json.loads(row["secrets"]),
    )


async def claim_overdue(conn: DbConnection, limit: int) -> list[OverdueMachine]:
    """Lock commissioning machines past their deadline; rows another replica holds are skipped, so two
    replicas never claim the same machine. Run inside the transaction that fails them."""
    rows = await conn.fetch(
        """
        SELECT system_id, commissioning_deadline FROM machines
         WHERE status = $1 AND commissioning_deadline < now()
         ORDER BY commissioning_deadline
         LIMIT $2
         FOR UPDATE SKIP LOCKED
        """,
        MachineStatus.COMMISSIONING.value,
        limit,
    )
    return [OverdueMachine(system_id=row["system_id"], deadline=row["commissioning_deadline"]) for row in rows]
