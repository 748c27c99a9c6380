"""The region's hold on PostgreSQL: connect in the background with back-off, migrate, hand out connections.

Until the first connection succeeds (and while PostgreSQL is away) every use raises the typed, retryable
Unavailable error, so the region keeps answering the bus instead of dying with its database.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import structlog

from metalbus.bus import backoff_delays
from metalbus.contracts.errors import Unavailable
from metalbus.db.migrate import MigrationError, MigrationReport, apply_migrations, current_level
from metalbus.db.pool import UNAVAILABLE_ERRORS, DbConnection, create_pool, database_errors_as_unavailable

log = structlog.get_logger("metalbus.region.database")
# What PostgreSQL may say while it starts or is being set up (no database yet, …): try again later.
RETRY_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


class Database:
    def __init__(self, dsn: str, *, pool_max: int, timeout_s: float) -> None:
        self._dsn = dsn
        self._pool_max = pool_max
        self._timeout_s = timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opened: asyncpg.Pool | None = None  # created, maybe not usable yet: close it on shutdown
        self.failure: str | None = None
        self.ready = asyncio.Event()

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The connection pool once PostgreSQL has answered and the schema is current (for its gauges)."""
        return self._pool

    async def connect_and_migrate(self) -> None:
        """Retry until PostgreSQL answers, then apply migrations under the advisory lock.

        Anything PostgreSQL says while it starts or is being set up means "try again"; a migration history
        that disagrees with this release is fatal and is reported by every health answer from then on.
        """
        # min_size=0: creating the pool opens nothing, so it cannot fail while PostgreSQL is away; each
        # acquire below connects afresh until one works, and the pool keeps reconnecting from then on.
        pool = await create_pool(self._dsn, min_size=0, max_size=self._pool_max, timeout_s=self._timeout_s)
        self._opened = pool
        for delay in backoff_delays(0.2, 5.0):
            try:
                report = await self._migrate_on_own_connection()
            except MigrationError as error:
                self.failure = f"migrations refused: {error}"
                log.error("database.migration_refused", error=str(error))
                await pool.close()
                return
            except RETRY_ERRORS as error:
                log.warning("database.unreachable", error=str(error), retry_in_s=delay)
                await asyncio.sleep(delay)
                continue
            log.info("database.ready", level=report.level, applied=list(report.applied))
            self._pool = pool
            self.ready.set()
            return

    async def _migrate_on_own_connection(self) -> MigrationReport:
        """Migrations run on a connection of their own, without the pool's per-statement timeout: a long
        migration (an index on a big table) or another replica holding the migration lock may take a while."""
        conn = await asyncpg.connect(self._dsn, timeout=self._timeout_s)
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[DbConnection]:
        if self._pool is None:
            raise Unavailable(self.failure or "database not connected yet")
        async with database_errors_as_unavailable(), self._pool.acquire(timeout=self._timeout_s) as conn:
            yield conn

    async def probe(self) -> tuple[bool, int | None, str | None]:
        """(reachable, migration level, error) — a cheap round trip for health reports."""
        try:
            async with self.connection() as conn:
                level = await current_level(conn)
        except Unavailable as error:
            return False, None, error.message
        return True, level, None

    async def close(self) -> None:
        if self._opened is not None:
            await self._opened.close()
