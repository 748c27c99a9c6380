"""Commissioning scripts: operators set, list and delete them; a commission call chooses some, in order.

The commissioning environment runs the chosen scripts after the inventory (the region renders them into the
machine's user-data: :func:`render_user_scripts`); each posts its result like the inventory does, and a script
that exits non-zero fails commissioning naming it (the metadata area's rule for every result).
"""

import base64
from collections.abc import Sequence

from metalbus.contracts.errors import BadRequest, Conflict, NotFound
from metalbus.contracts.scripts import (
    CommissioningScript,
    CommissioningScriptList,
    ScriptListQuery,
    ScriptQuery,
)
from metalbus.db.pool import DbConnection
from metalbus.subjects import SCRIPT_DELETE, SCRIPT_LIST, SCRIPT_SET
from metalbus_region.context import RegionContext, Route

SCRIPT_COLUMNS = "name, content, description, timeout_s, updated_at"
USER_SCRIPTS_MARKER = "    : # metalbus: the chosen scripts go here\n"
"""The body of ``user_scripts()`` in commissioning_script.sh, replaced by one printf line per chosen script."""


def routes(ctx: RegionContext) -> list[Route]:
    area = ScriptsArea(ctx)
    return [(SCRIPT_SET, area.set_script), (SCRIPT_LIST, area.list_scripts), (SCRIPT_DELETE, area.delete_script)]


class ScriptsArea:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database

    async def set_script(self, script: CommissioningScript) -> CommissioningScript:
        async with self.database.connection() as conn:
            row = await conn.fetchrow(
                f"""
                INSERT INTO commissioning_scripts (name, content, description, timeout_s)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (name) DO UPDATE
                   SET content = EXCLUDED.content, description = EXCLUDED.description,
                       timeout_s = EXCLUDED.timeout_s, updated_at = now()
                RETURNING {SCRIPT_COLUMNS}
                """,
                script.name,
                script.content,
                script.description,
                script.timeout_s,
            )
        assert row is not None  # INSERT … RETURNING always returns the row
        return CommissioningScript.model_validate(dict(row))

    async def list_scripts(self, _: ScriptListQuery) -> CommissioningScriptList:
        async with self.database.connection() as conn:
            rows = await conn.fetch(f"SELECT {SCRIPT_COLUMNS} FROM commissioning_scripts ORDER BY name")
        return CommissioningScriptList(scripts=[CommissioningScript.model_validate(dict(row)) for row in rows])

    async def delete_script(self, query: ScriptQuery) -> CommissioningScript:
        async with self.database.connection() as conn, conn.transaction():
            users = await conn.fetch(
                "SELECT system_id FROM machines WHERE status = 'commissioning' AND $1 = ANY(commissioning_scripts)",
                query.name,
            )
            if users:
                machines = ", ".join(sorted(row["system_id"] for row in users))
                raise Conflict(f"script {query.name} runs in the commissioning of {machines}; abort it first")
            row = await conn.fetchrow(
                f"DELETE FROM commissioning_scripts WHERE name = $1 RETURNING {SCRIPT_COLUMNS}", query.name
            )
        if row is None:
            raise NotFound(f"no commissioning script {query.name}")
        return CommissioningScript.model_validate(dict(row))


async def choose_scripts(conn: DbConnection, system_id: str, names: Sequence[str]) -> None:
    """Inside the commission transaction: the scripts this commissioning runs (all must exist, none twice)."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadRequest(f"scripts chosen twice: {', '.join(repeated)}")
    known = {
        row["name"] for row in await conn.fetch("SELECT name FROM commissioning_scripts WHERE name = ANY($1)", names)
    }
    unknown = [name for name in names if name not in known]
    if unknown:
        raise BadRequest(f"no commissioning script {', '.join(unknown)} (add it first: region.scripts.set)")
    await conn.execute("UPDATE machines SET commissioning_scripts = $2 WHERE system_id = $1", system_id, list(names))


async def chosen_scripts(conn: DbConnection, system_id: str) -> list[CommissioningScript]:
    """The scripts the machine's commissioning runs, in the chosen order."""
    rows = await conn.fetch(
        f"""
        SELECT {", ".join("s." + column for column in SCRIPT_COLUMNS.split(", "))}
          FROM machines m, unnest(m.commissioning_scripts) WITH ORDINALITY AS chosen(name, position)
          JOIN commissioning_scripts s ON s.name = chosen.name
         WHERE m.system_id = $1
         ORDER BY chosen.position
        """,
        system_id,
    )
    return [CommissioningScript.model_validate(dict(row)) for row in rows]


def render_user_scripts(runner: str, scripts: Sequence[CommissioningScript]) -> str:
    """The runner with its ``user_scripts()`` printing ``<name> <timeout_s> <content in base64>`` per script."""
    if USER_SCRIPTS_MARKER not in runner:
        raise RuntimeError("commissioning_script.sh has lost its user-scripts marker")
    lines = "".join(
        f"    printf '%s\\n' '{script.name} {script.timeout_s} {base64.b64encode(script.content.encode()).decode()}'\n"
        for script in scripts
    )
    return runner.replace(USER_SCRIPTS_MARKER, lines or USER_SCRIPTS_MARKER)
