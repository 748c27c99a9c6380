"""Machine rows: new system ids, inserting a machine, and turning a row into the Machine contract.

Shared by operator creation (machines) and PXE enlistment (boot); BMC secrets go to their own table here and
are never selected by ``MACHINE_COLUMNS``.
"""

import json
import secrets
import string
from typing import Any

import asyncpg

from metalbus.contracts.common import Architecture
from metalbus.contracts.errors import Conflict
from metalbus.contracts.machines import BootPurpose, Machine, MachineStatus, PowerState, PowerType
from metalbus.db.pool import DbConnection

_ALPHABET = string.ascii_lowercase + string.digits

MACHINE_COLUMNS = """
    system_id, hostname, status, status_reason, architecture, boot_mac::text AS boot_mac, power_type,
    power_parameters::text AS power_parameters, host(bmc_address) AS bmc_address, created_at, status_changed_at,
    commissioning_deadline, power_state, power_state_changed_at
"""


def new_system_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(6))


def machine_from_row(row: asyncpg.Record) -> Machine:
    return Machine(
        system_id=row["system_id"],
        hostname=row["hostname"],
        status=MachineStatus(row["status"]),
        status_reason=row["status_reason"],
        architecture=Architecture(row["architecture"]),
        boot_mac=row["boot_mac"],
        power_type=PowerType(row["power_type"]),
        power_parameters=json.loads(row["power_parameters"]),
        bmc_address=row["bmc_address"],
        created_at=row["created_at"],
        status_changed_at=row["status_changed_at"],
        commissioning_deadline=row["commissioning_deadline"],
        power_state=PowerState(row["power_state"]),
        power_state_changed_at=row["power_state_changed_at"],
    )


async def insert_machine(
    conn: DbConnection,
    *,
    hostname: str | None,
    architecture: Architecture,
    boot_mac: str | None,
    power_type: PowerType = PowerType.MANUAL,
    power_parameters: dict[str, Any] | None = None,
    power_secrets: dict[str, str] | None = None,
    boot_purpose: BootPurpose = BootPurpose.LOCAL,
) -> Machine:
    """Insert a NEW machine (run inside the caller's transaction). A MAC or hostname already taken is a
    Conflict. The BMC address, if any, is ``power_parameters["address"]``; secrets are stored apart."""
    parameters = dict(power_parameters or {})
    for _ in range(5):
        system_id = new_system_id()
        try:
            async with conn.transaction():  # a savepoint: a clash on a random id is retried
                row = await conn.fetchrow(
                    f"""
                    INSERT INTO machines (system_id, hostname, status, architecture, boot_mac, power_type,
                                          power_parameters, bmc_address, boot_purpose)
                    VALUES ($1, coalesce($2, 'node-' || $1), $3, $4, $5::macaddr, $6, $7::jsonb, $8::inet, $9)
                    RETURNING {MACHINE_COLUMNS}
                    """,
                    system_id,
                    hostname,
                    MachineStatus.NEW.value,
                    architecture.value,
                    boot_mac,
                    power_type.value,
                    json.dumps(parameters),
                    parameters.get("address"),
                    boot_purpose.value,
                )
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "machines_pkey":
                continue
            raise Conflict(f"a machine with this {clashing_field(error)} already exists") from error
        except (asyncpg.InvalidTextRepresentationError, asyncpg.DataError) as error:
            raise Conflict(f"invalid machine field: {error}") from error
        assert row is not None
        if power_secrets:
            await conn.execute(
                "INSERT INTO machine_power_secrets (system_id, secrets) VALUES ($1, $2::jsonb)",
                system_id,
                json.dumps(power_secrets),
            )
        return machine_from_row(row)
    raise Conflict("could not find a free system id")


def clashing_field(error: asyncpg.UniqueViolationError) -> str:
    return {"machines_boot_mac_key": "boot MAC", "machines_hostname_key": "hostname"}.get(
        error.constraint_name or "", "identity"
    )
