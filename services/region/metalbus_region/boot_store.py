"""Rows behind boot decisions: boot resources, the machine a PXE-booting MAC belongs to, the enlistment switch."""

import json
from dataclasses import dataclass

import asyncpg

from metalbus.contracts.boot import BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.errors import NotFound
from metalbus.contracts.machines import BootPurpose, MachineStatus
from metalbus.db.pool import DbConnection

_RESOURCE_COLUMNS = "architecture, purpose, kernel, initrd, squashfs, kernel_params"


@dataclass(frozen=True)
class BootingMachine:
    """The known machine a MAC belongs to, with what the boot decision needs of it."""

    system_id: str
    status: MachineStatus
    boot_purpose: BootPurpose


def _resource_from_row(row: asyncpg.Record) -> BootResource:
    return BootResource(
        architecture=Architecture(row["architecture"]),
        purpose=BootPurpose(row["purpose"]),
        kernel=row["kernel"],
        initrd=row["initrd"],
        squashfs=row["squashfs"],
        kernel_params=row["kernel_params"],
    )


async def upsert_resource(conn: DbConnection, resource: BootResource) -> BootResource:
    """Store the resource of its (architecture, purpose), replacing the one before."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO boot_resources ({_RESOURCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (architecture, purpose) DO UPDATE
           SET kernel = excluded.kernel, initrd = excluded.initrd, squashfs = excluded.squashfs,
               kernel_params = excluded.kernel_params
        RETURNING {_RESOURCE_COLUMNS}
        """,
        resource.architecture.value,
        resource.purpose.value,
        resource.kernel,
        resource.initrd,
        resource.squashfs,
        resource.kernel_params,
    )
    assert row is not None
    return _resource_from_row(row)


async def list_resources(conn: DbConnection) -> list[BootResource]:
    rows = await conn.fetch(f"SELECT {_RESOURCE_COLUMNS} FROM boot_resources ORDER BY architecture, purpose")
    return [_resource_from_row(row) for row in rows]


async def find_resource(conn: DbConnection, architecture: Architecture, purpose: BootPurpose) -> BootResource:
    """The resource a boot of ``purpose`` on ``architecture`` needs; NotFound names both."""
    row = await conn.fetchrow(
        f"SELECT {_RESOURCE_COLUMNS} FROM boot_resources WHERE architecture = $1 AND purpose = $2",
        architecture.value,
        purpose.value,
    )
    if row is None:
        raise NotFound(f"no boot resource for architecture {architecture.value} and purpose {purpose.value}")
    return _resource_from_row(row)


async def machine_by_mac(conn: DbConnection, mac: str) -> BootingMachine | None:
    """The machine whose boot MAC this is, else the machine that reported an interface with it."""
    row = await conn.fetchrow(
        """
        SELECT system_id, status, boot_purpose FROM (
            SELECT system_id, status, boot_purpose, 0 AS preference FROM machines WHERE boot_mac = $1::macaddr
            UNION ALL
            SELECT m.system_id, m.status, m.boot_purpose, 1 FROM machine_interfaces i JOIN machines m USING (system_id)
             WHERE i.mac = $1::macaddr
        ) AS candidates
        ORDER BY preference, system_id LIMIT 1
        """,
        mac,
    )
    if row is None:
        return None
    return BootingMachine(
        system_id=row["system_id"], status=MachineStatus(row["status"]), boot_purpose=BootPurpose(row["boot_purpose"])
    )


async def enlistment_enabled(conn: DbConnection) -> bool:
    """The region setting ``enlistment_enabled`` (a JSON boolean); enlistment is on unless it is ``false``."""
    value = await conn.fetchval("SELECT value::text FROM region_settings WHERE name = 'enlistment_enabled'")
    return value is None or json.loads(value) is not False
