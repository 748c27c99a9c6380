"""The asyncpg pool, and the mapping of 'the database is not there' onto the bus's Unavailable error."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import asyncpg

from metalbus.contracts.errors import Unavailable

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # A plain connection or one borrowed from the pool: the queries do not care which.
    DbConnection: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
else:
    DbConnection = asyncpg.Connection

# Errors meaning "PostgreSQL is unreachable or restarting": the caller may retry later.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.ConnectionDoesNotExistError,
)
# ... and what the region's own database holder raises while it has no pool yet.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (Unavailable, *CONNECTION_ERRORS)


class TransactionScopedConnection(asyncpg.Connection):
    """A pooled connection that goes back to the pool without asyncpg's reset query (``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL``: one more round trip and statement for every transaction). Pool users keep
    no session state: their locks are ``pg_advisory_xact_lock``, cursors live inside transactions, nobody LISTENs
    or SETs (migrations, which take a session lock, run on a connection of their own). asyncpg still rolls back
    a transaction left open on release."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 5.0) -> asyncpg.Pool:
    """Create the pool (of ``TransactionScopedConnection``); raise Unavailable with the reason if PostgreSQL does
    not answer."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout_s,
            command_timeout=timeout_s,
            connection_class=TransactionScopedConnection,
        )
    except CONNECTION_ERRORS as error:
        raise Unavailable(f"PostgreSQL unreachable: {error}") from error
    assert pool is not None
    return pool


@asynccontextmanager
async def database_errors_as_unavailable() -> AsyncIterator[None]:
    """Turn connection-level database failures into the typed, retryable Unavailable error."""
    try:
        yield
    except CONNECTION_ERRORS as error:
        raise Unavailable(f"database unavailable: {type(error).__name__}: {error}") from error
