"""Commands that carry an idempotency key are applied once: the first reply is stored and answers repeats.

The key row is inserted in the same transaction as the command's effect. A repeat that arrives while the first
is still running waits on that row (PostgreSQL's unique index makes it), then returns the stored reply. A command
that fails rolls back, key included, so its repeat runs afresh.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from metalbus.contracts.base import Message
from metalbus.contracts.errors import Conflict
from metalbus.db.pool import DbConnection

ReplyT = TypeVar("ReplyT", bound=Message)


async def apply_once(
    conn: DbConnection,
    key: str | None,
    subject: str,
    reply_model: type[ReplyT],
    apply: Callable[[DbConnection], Awaitable[ReplyT]],
) -> ReplyT:
    """Run ``apply`` in a transaction on ``conn`` unless ``key`` was applied before (then return that reply)."""
    async with conn.transaction():
        if key is None:
            return await apply(conn)
        fresh = await conn.fetchval(
            "INSERT INTO idempotency_keys (key, subject) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING RETURNING 1",
            key,
            subject,
        )
        if not fresh:
            stored = await conn.fetchrow(
                "SELECT subject, reply::text AS reply FROM idempotency_keys WHERE key = $1", key
            )
            assert stored is not None and stored["reply"] is not None
            if stored["subject"] != subject:
                raise Conflict(f"idempotency key {key!r} was used for {stored['subject']}, not {subject}")
            return reply_model.model_validate_json(stored["reply"])
        reply = await apply(conn)
        await conn.execute("UPDATE idempotency_keys SET reply = $2::jsonb WHERE key = $1", key, reply.model_dump_json())
        return reply
