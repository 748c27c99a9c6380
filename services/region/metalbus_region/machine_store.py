"""Machine queries beside the lifecycle: read, page, update and delete machines, boot purpose, power target,
overdue claims.

Status changes are not made here (``transitions.apply_action`` is the only way); BMC secrets are read only by
``power_target``, whose result is handed to the power client and never returned or logged.
"""

import json
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import ip_address
from typing import Any

import asyncpg

from metalbus.contracts.errors import BadRequest, Conflict, InvalidTransition, NotFound
from metalbus.contracts.machines import (
    BootPurpose,
    Machine,
    MachineList,
    MachineListQuery,
    MachineStatus,
    MachineUpdate,
    PowerType,
)
from metalbus.db.pool import DbConnection
from metalbus_region.machine_rows import MACHINE_COLUMNS, clashing_field, machine_from_row
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


async def list_machines(conn: DbConnection, query: MachineListQuery) -> MachineList:
    """One page of the machines matching every filter given, ordered by hostname then system id, with the count
    of all matches. The WHERE clause holds only the filters given, so each combination gets its own plan on the
    indexes that lead with that filter (migration 0004)."""
    conditions, values = _list_filters(query)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await conn.fetch(
        f"""
        SELECT {MACHINE_COLUMNS} FROM machines {where}
         ORDER BY hostname, system_id
         OFFSET ${len(values) + 1} LIMIT ${len(values) + 2}
        """,
        *values,
        query.offset,
        query.limit,
    )
    if 0 < len(rows) < query.limit or (not rows and query.offset == 0):
        total = query.offset + len(rows)  # the page holds the last match: no need to count
    else:
        total = int(await conn.fetchval(f"SELECT count(*) FROM machines {where}", *values))
    return MachineList(machines=[machine_from_row(row) for row in rows], total=total, offset=query.offset)


def _list_filters(query: MachineListQuery) -> tuple[list[str], list[str]]:
    given = {"status": query.status, "hostname": query.hostname, "architecture": query.architecture}
    conditions: list[str] = []
    values: list[str] = []
    for column, value in given.items():
        if value is not None:
            values.append(str(value))
            conditions.append(f"{column} = ${len(values)}")
    return conditions, values


async def update_machine(conn: DbConnection, update: MachineUpdate) -> Machine:
    """Change the fields given (not None), inside the caller's transaction. A hostname or boot MAC of another
    machine is a Conflict. New power parameters bring their BMC address (``address``) with them; new power
    secrets replace the stored ones."""
    parameters = update.power_parameters
    try:
        row = await conn.fetchrow(
            f"""
            UPDATE machines
               SET hostname = coalesce($2, hostname), architecture = coalesce($3, architecture),
                   boot_mac = coalesce($4::macaddr, boot_mac), power_type = coalesce($5, power_type),
                   power_parameters = coalesce($6::jsonb, power_parameters),
                   bmc_address = CASE WHEN $6::jsonb IS NULL THEN bmc_address ELSE $7::inet END
             WHERE system_id = $1
            RETURNING {MACHINE_COLUMNS}
            """,
            update.system_id,
            update.hostname,
            update.architecture.value if update.architecture else None,
            update.boot_mac,
            update.power_type.value if update.power_type else None,
            None if parameters is None else json.dumps(parameters),
            None if parameters is None else _bmc_address(parameters),
        )
    except asyncpg.UniqueViolationError as error:
        raise Conflict(f"a machine with this {clashing_field(error)} already exists") from error
    if row is None:
        raise NotFound(f"no machine {update.system_id}")
    if update.power_secrets is not None:
        await replace_power_secrets(conn, update.system_id, update.power_secrets)
    return machine_from_row(row)


def _bmc_address(parameters: dict[str, Any]) -> str | None:
    """The BMC address that goes with these power parameters: their ``address``, which must be an IP address."""
    address = parameters.get("address")
    if address is None:
        return None
    try:
        return str(ip_address(str(address)))
    except ValueError as error:
        raise BadRequest(f"power_parameters address {address!r} is not an IP address") from error


async def replace_power_secrets(conn: DbConnection, system_id: str, secrets: dict[str, str]) -> None:
    """The machine's BMC secrets become ``secrets`` (none at all if it is empty)."""
    if not secrets:
        await conn.execute("DELETE FROM machine_power_secrets WHERE system_id = $1", system_id)
        return
    await conn.execute(
        """
        INSERT INTO machine_power_secrets (system_id, secrets) VALUES ($1, $2::jsonb)
        ON CONFLICT (system_id) DO UPDATE SET secrets = excluded.secrets
        """,
        system_id,
        json.dumps(secrets),
    )


async def delete_machine(conn: DbConnection, system_id: str) -> None:
    """Remove the machine and everything that hangs on it (secrets, interfaces, tokens, results, inventory), in
    the caller's transaction. A commissioning machine is not deleted: abort it first."""
    status = await conn.fetchval("SELECT status FROM machines WHERE system_id = $1 FOR UPDATE", system_id)
    if status is None:
        raise NotFound(f"no machine {system_id}")
    if status == MachineStatus.COMMISSIONING.value:
        raise InvalidTransition(f"cannot delete a machine that is {status}: abort its commissioning first")
    await conn.execute("DELETE FROM machines WHERE system_id = $1", system_id)


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
