"""Versioned SQL migrations, applied in order under a PostgreSQL advisory lock.

Files are ``migrations/NNNN_name.sql``. Each is applied in its own transaction and recorded with its
checksum in ``schema_migrations``; an applied file that changed afterwards is refused. The advisory lock
makes concurrent runners (two region replicas starting at once) take turns: the second finds nothing to do.
"""

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg
import structlog

from metalbus.db.pool import DbConnection

# pg_advisory_lock key: "metalbus" as a number, so that other applications' locks do not collide.
MIGRATION_LOCK_KEY = int.from_bytes(b"metalbus", "big") & 0x7FFF_FFFF_FFFF_FFFF
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = structlog.get_logger("metalbus.db.migrate")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationReport:
    applied: tuple[int, ...]
    level: int


class MigrationError(RuntimeError):
    """The database's migration history disagrees with the files shipped."""


def shipped_migrations() -> tuple[Migration, ...]:
    found = []
    for entry in resources.files("metalbus.db").joinpath("migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"migration versions must be 1..N without gaps, found {versions}")
    return tuple(found)


def target_level() -> int:
    return len(shipped_migrations())


_HISTORY_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


async def current_level(conn: DbConnection) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    level = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(level)


async def apply_migrations(conn: DbConnection, migrations: tuple[Migration, ...] | None = None) -> MigrationReport:
    """Bring the schema up to date; safe to call from several processes at once."""
    wanted = shipped_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_HISTORY_TABLE)
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        recorded = {row["version"]: row for row in rows}
        applied: list[int] = []
        for migration in wanted:
            row = recorded.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version} ({row['name']}) was changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("db.migration_applied", version=migration.version, name=migration.name)
            applied.append(migration.version)
        unknown = sorted(set(recorded) - {m.version for m in wanted})
        if unknown:
            raise MigrationError(f"database has migrations this release does not know: {unknown}")
        return MigrationReport(applied=tuple(applied), level=await current_level(conn))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate_dsn(dsn: str) -> MigrationReport:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()
