"""Reading the JetStream stream METALBUS_EVENTS: one page of history, or a live follower for an SSE stream.

History uses a pull consumer made for the one request (it knows how many events match, so the page is read
without waiting) and deleted after it. A follower is an ordered push consumer (flow-controlled, so a slow client
slows the stream instead of losing events). Both are ephemeral, in memory, deleted when done, and carry an
inactivity threshold so the server drops them even if the api dies first.
"""

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError, Timeout, Unavailable
from metalbus.subjects import (
    EVENT_LEASE,
    EVENT_MACHINE,
    EVENT_POWER,
    EVENT_RACK_SERVICE,
    EVENT_RESULT,
    EVENTS_STREAM,
    EventSubject,
    wildcard,
)

CONSUMER_INACTIVE_S = 30.0
FOLLOWER_PENDING_MSGS = 256


class EventKind(StrEnum):
    MACHINE = "machine"
    LEASE = "lease"
    POWER = "power"
    RESULT = "result"
    RACK = "rack"


SUBJECT_OF_KIND: dict[EventKind, EventSubject[Any]] = {
    EventKind.MACHINE: EVENT_MACHINE,
    EventKind.LEASE: EVENT_LEASE,
    EventKind.POWER: EVENT_POWER,
    EventKind.RESULT: EVENT_RESULT,
    EventKind.RACK: EVENT_RACK_SERVICE,
}
EVERY_EVENT = EVENTS_STREAM.subjects[0]  # events.>


class EventRecord(BaseModel):
    sequence: int
    subject: str
    data: dict[str, Any]


class EventPage(BaseModel):
    events: list[EventRecord]


def filter_subject(kind: EventKind | None, event_id: str | None) -> str:
    """The stream filter for a kind and/or an id (the id must be one NATS token: the route validates it)."""
    if kind is not None:
        subject = SUBJECT_OF_KIND[kind]
        if event_id is None:
            return wildcard(subject.pattern)
        return subject.format(**{subject.params[0]: event_id})
    if event_id is None:
        return EVERY_EVENT
    return f"{EVERY_EVENT.removesuffix('>')}*.{event_id}"


def kind_of(subject: str) -> str:
    """``events.machine.x7kq2m`` → ``machine``."""
    parts = subject.split(".")
    return parts[1] if len(parts) > 1 else subject


def record_of(subject: str, sequence: int, payload: bytes) -> EventRecord:
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    return EventRecord(
        sequence=sequence,
        subject=subject,
        data=data if isinstance(data, dict) else {"raw": payload.decode(errors="replace")},
    )


def sse_frame(record: EventRecord) -> bytes:
    data = json.dumps(record.data, separators=(",", ":"))
    return f"id: {record.sequence}\nevent: {kind_of(record.subject)}\ndata: {data}\n\n".encode()


KEEPALIVE_FRAME = b": keepalive\n\n"
CONNECTED_FRAME = b": connected\n\n"


@asynccontextmanager
async def jetstream_errors(what: str) -> AsyncIterator[None]:
    """NATS and JetStream failures as the api's typed errors."""
    try:
        yield
    except MetalbusError:
        raise
    except nats.js.errors.NotFoundError as error:
        raise Unavailable(f"{what}: stream {EVENTS_STREAM.name} does not exist (is a region running?)") from error
    except (nats.errors.TimeoutError, TimeoutError) as error:
        raise Timeout(f"{what}: JetStream did not answer in time") from error
    except nats.errors.Error as error:
        raise Unavailable(f"{what}: JetStream not usable: {error!r}") from error


def ephemeral_config(subject: str, after: int | None) -> ConsumerConfig:
    """An in-memory, unacknowledged consumer on ``subject``: from after ``after``, or from now."""
    config = ConsumerConfig(
        filter_subject=subject,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=CONSUMER_INACTIVE_S,
        mem_storage=True,
        num_replicas=1,
    )
    if after is not None:
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = after + 1
    return config


class EventReader:
    def __init__(self, bus: Bus, *, timeout_s: float) -> None:
        self._js = bus.client.jetstream(timeout=timeout_s)
        self._timeout_s = timeout_s

    async def history(self, subject: str, *, after: int, limit: int) -> list[EventRecord]:
        """Up to ``limit`` events on ``subject`` with a stream sequence above ``after``, oldest first."""
        name = f"api-history-{secrets.token_hex(8)}"
        config = ephemeral_config(subject, after)
        config.name = name
        async with jetstream_errors("event history"):
            info = await self._js.add_consumer(EVENTS_STREAM.name, config=config)
            try:
                pending = int(info.num_pending or 0)
                if pending == 0:
                    return []
                subscription = await self._js.pull_subscribe_bind(consumer=name, stream=EVENTS_STREAM.name)
                try:
                    messages = await subscription.fetch(batch=min(limit, pending), timeout=self._timeout_s)
                finally:
                    await subscription.unsubscribe()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.delete_consumer(name)
        return [record_of(msg.subject, msg.metadata.sequence.stream, msg.data) for msg in messages]

    async def follow(self, subject: str, *, after: int | None) -> "EventFollower":
        """A live follower from just after ``after`` (or from now); the caller must ``close()`` it."""
        async with jetstream_errors("event stream"):
            subscription = await self._js.subscribe(
                subject,
                stream=EVENTS_STREAM.name,
                ordered_consumer=True,
                config=ephemeral_config(subject, after),
                pending_msgs_limit=FOLLOWER_PENDING_MSGS,
                inactive_threshold=CONSUMER_INACTIVE_S,
            )
        return EventFollower(self, subscription)

    async def delete_consumer(self, name: str) -> None:
        """Best effort: if this fails, the consumer's inactivity threshold removes it anyway."""
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._js.delete_consumer(EVENTS_STREAM.name, name)


class EventFollower:
    def __init__(self, reader: EventReader, subscription: Any) -> None:
        self._reader = reader
        self._subscription = subscription
        self.closed = False

    async def next(self, timeout_s: float) -> EventRecord | None:
        """The next event, or None when none came within ``timeout_s``."""
        async with jetstream_errors("event stream"):
            try:
                msg = await self._subscription.next_msg(timeout=timeout_s)
            except nats.errors.TimeoutError:
                return None
            return record_of(msg.subject, msg.metadata.sequence.stream, msg.data)

    async def close(self) -> None:
        """Unsubscribe and delete the consumer; safe to call twice, and while being cancelled."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
            # The ordered consumer's current name (it changes when nats-py recreates it after a gap).
            await self._reader.delete_consumer(self._subscription._consumer)
