"""Commissioning results and the hardware inventory: store a script's result (and its event), store and read the
inventory, read a machine's results, tell whether an inventory arrived during the current commissioning."""

import json
from typing import Any

from pydantic import ValidationError

from metalbus.bus import describe_validation_error
from metalbus.contracts.errors import NotFound
from metalbus.contracts.metadata import (
    HardwareInventory,
    ResultEvent,
    ScriptResult,
    ScriptResultList,
    StoredScriptResult,
)
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_RESULT
from metalbus_region.outbox import record_event


class InvalidInventory(ValueError):
    """The inventory result is not a HardwareInventory; the message says what is wrong."""


def _storable_text(text: str) -> str:
    """PostgreSQL text (and jsonb) cannot hold NUL characters; a script's output may."""
    return text.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def _storable_json(value: Any) -> str:
    return json.dumps(value).replace("\\u0000", "\\ufffd")


async def store_result(conn: DbConnection, system_id: str, result: ScriptResult) -> ResultEvent:
    """Record one script's outcome and its event on ``events.result.<system_id>`` (caller's transaction)."""
    await conn.execute(
        """
        INSERT INTO commissioning_results (system_id, name, exit_status, stdout, stderr, result, runtime_s)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7)
        """,
        system_id,
        _storable_text(result.name),
        result.exit_status,
        _storable_text(result.stdout),
        _storable_text(result.stderr),
        None if result.result is None else _storable_json(result.result),
        result.runtime_s,
    )
    return await record_event(
        conn,
        EVENT_RESULT,
        lambda sequence, at: ResultEvent(
            sequence=sequence, system_id=system_id, name=result.name, exit_status=result.exit_status, at=at
        ),
        system_id=system_id,
    )


def parse_inventory(result: ScriptResult) -> HardwareInventory:
    """The inventory in a result: its ``result`` object if it has one, else its stdout as JSON."""
    try:
        if result.result is not None:
            return HardwareInventory.model_validate(result.result)
        return HardwareInventory.model_validate_json(result.stdout)
    except ValidationError as error:
        problem = describe_validation_error(HardwareInventory, error)
        raise InvalidInventory(f"{result.name} sent an {problem}"[:900]) from error


async def store_inventory(conn: DbConnection, system_id: str, inventory: HardwareInventory) -> None:
    """Replace the machine's inventory and its interface rows (caller's transaction)."""
    await conn.execute(
        """
        INSERT INTO hardware_inventory (system_id, cpu_model, cpu_count, cpu_speed_mhz, memory_mib, block_devices,
                                        interfaces, lldp_neighbours, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8::jsonb, now())
        ON CONFLICT (system_id) DO UPDATE
           SET cpu_model = excluded.cpu_model, cpu_count = excluded.cpu_count,
               cpu_speed_mhz = excluded.cpu_speed_mhz, memory_mib = excluded.memory_mib,
               block_devices = excluded.block_devices, interfaces = excluded.interfaces,
               lldp_neighbours = excluded.lldp_neighbours, updated_at = excluded.updated_at
        """,
        system_id,
        _storable_text(inventory.cpu_model),
        inventory.cpu_count,
        inventory.cpu_speed_mhz,
        inventory.memory_mib,
        _json_list(inventory.block_devices),
        _json_list(inventory.interfaces),
        _json_list(inventory.lldp_neighbours),
    )
    await conn.execute("DELETE FROM machine_interfaces WHERE system_id = $1", system_id)
    await conn.executemany(
        """
        INSERT INTO machine_interfaces (system_id, name, mac, link_up, speed_mbps)
        VALUES ($1, $2, $3::macaddr, $4, $5)
        """,
        [(system_id, _storable_text(nic.name), nic.mac, nic.link_up, nic.speed_mbps) for nic in inventory.interfaces],
    )


def _json_list(items: list[Any]) -> str:
    return _storable_json([item.model_dump(mode="json", exclude={"schema_version"}) for item in items])


async def inventory_received_during_commissioning(conn: DbConnection, system_id: str) -> bool:
    """Whether an inventory was stored since the machine last changed status (it entered COMMISSIONING then)."""
    received = await conn.fetchval(
        """
        SELECT EXISTS (SELECT 1 FROM hardware_inventory i JOIN machines m USING (system_id)
                        WHERE i.system_id = $1 AND i.updated_at >= m.status_changed_at)
        """,
        system_id,
    )
    return bool(received)


async def read_inventory(conn: DbConnection, system_id: str) -> HardwareInventory:
    """The machine's stored inventory; NotFound for an unknown machine or one that has none yet."""
    row = await conn.fetchrow(
        """
        SELECT i.system_id IS NOT NULL AS known, i.cpu_model, i.cpu_count, i.cpu_speed_mhz, i.memory_mib,
               i.block_devices::text AS block_devices, i.interfaces::text AS interfaces,
               i.lldp_neighbours::text AS lldp_neighbours
          FROM machines m LEFT JOIN hardware_inventory i USING (system_id)
         WHERE m.system_id = $1
        """,
        system_id,
    )
    if row is None:
        raise NotFound(f"no machine {system_id}")
    if not row["known"]:
        raise NotFound(f"machine {system_id} has no inventory yet: commission it")
    return HardwareInventory(
        cpu_model=row["cpu_model"],
        cpu_count=row["cpu_count"],
        cpu_speed_mhz=row["cpu_speed_mhz"],
        memory_mib=row["memory_mib"],
        block_devices=json.loads(row["block_devices"]),
        interfaces=json.loads(row["interfaces"]),
        lldp_neighbours=json.loads(row["lldp_neighbours"]),
    )


async def read_results(conn: DbConnection, system_id: str) -> ScriptResultList:
    """Every stored script result of the machine, oldest first (the newest run last); NotFound if unknown."""
    rows = await conn.fetch(
        """
        SELECT r.result_id, r.name, r.exit_status, r.stdout, r.stderr, r.result::text AS result, r.runtime_s,
               r.recorded_at
          FROM machines m LEFT JOIN commissioning_results r USING (system_id)
         WHERE m.system_id = $1
         ORDER BY r.recorded_at, r.result_id
        """,
        system_id,
    )
    if not rows:
        raise NotFound(f"no machine {system_id}")
    return ScriptResultList(
        system_id=system_id,
        results=[
            StoredScriptResult(
                name=row["name"],
                exit_status=row["exit_status"],
                stdout=row["stdout"],
                stderr=row["stderr"],
                result=None if row["result"] is None else json.loads(row["result"]),
                runtime_s=row["runtime_s"],
                recorded_at=row["recorded_at"],
            )
            for row in rows
            if row["result_id"] is not None
        ],
    )
