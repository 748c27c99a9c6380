"""What the region keeps about API keys in PostgreSQL: the key id, its name and the SHA-256 of its secret."""

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from metalbus.db.pool import DbConnection


@dataclass(frozen=True)
class StoredApiKey:
    key_id: str
    name: str
    secret_sha256: str = field(repr=False)
    revoked: bool


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def insert_key(conn: DbConnection, key_id: str, name: str, secret: str) -> datetime | None:
    """Store a new key (its secret's digest only); returns when it was created, or None if the id is taken."""
    try:
        async with conn.transaction():  # a savepoint: a clash on a random id is retried by the caller
            created_at: datetime = await conn.fetchval(
                "INSERT INTO api_keys (key_id, name, secret_sha256) VALUES ($1, $2, $3) RETURNING created_at",
                key_id,
                name,
                secret_digest(secret),
            )
    except asyncpg.UniqueViolationError:
        return None
    return created_at


async def find_key(conn: DbConnection, key_id: str) -> StoredApiKey | None:
    row = await conn.fetchrow(
        "SELECT key_id, name, secret_sha256, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_id = $1",
        key_id,
    )
    if row is None:
        return None
    return StoredApiKey(
        key_id=row["key_id"], name=row["name"], secret_sha256=row["secret_sha256"], revoked=row["revoked"]
    )
