"""The event outbox: record an event in the transaction that makes the change, publish it afterwards.

Recording and the change commit together, so an event is never lost and never describes something that did not
happen. A publisher task in every replica moves unpublished rows to JetStream in sequence order; rows are claimed
with ``FOR UPDATE SKIP LOCKED`` so replicas do not publish the same row at once, and the sequence travels as
``Nats-Msg-Id`` so a row published twice (a replica killed between publish and mark) is dropped by the stream.
"""

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import structlog

from metalbus.bus import Bus
from metalbus.contracts.base import Message
from metalbus.contracts.errors import MetalbusError
from metalbus.db.pool import DbConnection
from metalbus.subjects import EventSubject
from metalbus_region.database import RETRY_ERRORS, Database

EventT = TypeVar("EventT", bound=Message)

log = structlog.get_logger("metalbus.region.outbox")
# NATS or PostgreSQL away: keep the rows, try again on the next round.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (MetalbusError, *RETRY_ERRORS)


async def record_event(
    conn: DbConnection,
    subject: EventSubject[EventT],
    build: Callable[[int, datetime], EventT],
    **params: str,
) -> EventT:
    """Add an event to the outbox inside the caller's transaction. ``build(sequence, at)`` makes the event,
    so it can carry its own sequence number and the database's clock."""
    row = await conn.fetchrow("SELECT nextval('events_sequence_seq') AS sequence, now() AS at")
    assert row is not None
    event = build(int(row["sequence"]), row["at"])
    await conn.execute(
        "INSERT INTO events (sequence, subject, payload, created_at) VALUES ($1, $2, $3::jsonb, $4)",
        row["sequence"],
        subject.format(**params),
        event.model_dump_json(),
        row["at"],
    )
    return event


async def record_events(
    conn: DbConnection,
    subject: EventSubject[EventT],
    builds: Sequence[tuple[Callable[[int, datetime], EventT], dict[str, str]]],
) -> list[EventT]:
    """``record_event`` for many events of one subject in two statements: ``(build, params)`` per event, in the
    order their sequence numbers are drawn."""
    if not builds:
        return []
    rows = await conn.fetch(
        "SELECT nextval('events_sequence_seq') AS sequence, now() AS at FROM generate_series(1, $1)", len(builds)
    )
    events = [build(int(row["sequence"]), row["at"]) for (build, _), row in zip(builds, rows, strict=True)]
    await conn.execute(
        """
        INSERT INTO events (sequence, subject, payload, created_at)
        SELECT sequence, subject, payload::jsonb, $4 FROM unnest($1::bigint[], $2::text[], $3::text[])
            AS e(sequence, subject, payload)
        """,
        [row["sequence"] for row in rows],
        [subject.format(**params) for _, params in builds],
        [event.model_dump_json() for event in events],
        rows[0]["at"],
    )
    return events


class OutboxPublisher:
    """Publishes committed events to JetStream; ``wake()`` after a commit makes it go at once."""

    def __init__(
        self,
        database: Database,
        bus: Bus,
        *,
        idle_poll_s: float = 0.25,
        batch: int = 200,
        retention_s: float = 3600.0,
        prune_every_s: float = 60.0,
    ) -> None:
        self._database = database
        self._bus = bus
        self._idle_poll_s = idle_poll_s
        self._batch = batch
        self._retention = timedelta(seconds=retention_s)
        self._prune_every_s = prune_every_s
        self._last_prune = time.monotonic()
        self._wake = asyncio.Event()
        self.published = 0
        self.pruned = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        await self._database.ready.wait()
        while not stop.is_set():
            try:
                sent = await self.publish_pending()
            except PUBLISH_ERRORS as error:
                log.warning("outbox.publish_failed", error=str(error))
                sent = 0
            if time.monotonic() - self._last_prune >= self._prune_every_s:
                with contextlib.suppress(*PUBLISH_ERRORS):
                    await self.prune()
                self._last_prune = time.monotonic()
            if sent < self._batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self._idle_poll_s)

    async def prune(self, limit: int = 10_000) -> int:
        """Delete up to ``limit`` rows published longer ago than the retention: JetStream keeps the events, the
        table only has to hold what is not published yet. Returns how many."""
        async with self._database.connection() as conn:
            status = await conn.execute(
                """
                DELETE FROM events WHERE sequence IN (
                    SELECT sequence FROM events WHERE published_at < now() - $1::interval ORDER BY sequence LIMIT $2)
                """,
                self._retention,
                limit,
            )
        deleted = int(status.split()[-1])
        self.pruned += deleted
        return deleted

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished events in sequence order; returns how many."""
        async with self._database.connection() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT sequence, subject, payload::text AS payload FROM events
                 WHERE published_at IS NULL ORDER BY sequence LIMIT $1 FOR UPDATE SKIP LOCKED
                """,
                self._batch,
            )
            if rows:
                await self._bus.publish_raw_events(
                    [(row["subject"], row["payload"].encode(), f"metalbus-event-{row['sequence']}") for row in rows]
                )
                await conn.execute(
                    "UPDATE events SET published_at = now() WHERE sequence = ANY($1::bigint[])",
                    [row["sequence"] for row in rows],
                )
        self.published += len(rows)
        return len(rows)
