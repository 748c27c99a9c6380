"""The bus: connect to NATS with reconnect, typed request/reply, typed serving, events on JetStream.

No business logic lives here. Replies that are errors carry the header ``Metalbus-Error: <code>`` and an
:class:`~metalbus.contracts.errors.ErrorEnvelope` body; everything else is the reply model's JSON.
"""

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext
from pydantic import ValidationError

from metalbus.contracts.base import Message
from metalbus.contracts.errors import (
    BadRequest,
    ErrorEnvelope,
    Internal,
    MetalbusError,
    Timeout,
    Unavailable,
    error_from_envelope,
)
from metalbus.subjects import STREAMS, EventSubject, RequestSubject, StreamSpec

ERROR_HEADER = "Metalbus-Error"
DEFAULT_TIMEOUT_S = 5.0
NO_RESPONDERS_STATUS = "503"
DEFAULT_INBOX_PREFIX = "_INBOX"  # nats-py's own default
PERMISSIONS_VIOLATION = "permissions violation"  # nats-server's -ERR for a refused publish/subscribe

log = structlog.get_logger("metalbus.bus")

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)
EventT = TypeVar("EventT", bound=Message)


@dataclass(frozen=True)
class ConnectOptions:
    """How to reach NATS and how hard to try."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    name: str = "metalbus"
    connect_timeout_s: float = 2.0
    initial_connect_deadline_s: float = 60.0
    reconnect_wait_s: float = 0.5
    user: str | None = None
    password: str | None = None
    # Where replies come back (``_INBOX.<user>`` when NATS permissions give each user its own inboxes).
    inbox_prefix: str | None = None


def backoff_delays(start_s: float, max_s: float) -> "itertools.accumulate[float]":
    """Exponential back-off: start, 2 x start, … capped at max (an endless iterator)."""
    return itertools.accumulate(itertools.repeat(start_s), lambda prev, _: min(prev * 2, max_s))


async def connect_nats(options: ConnectOptions) -> NatsClient:
    """Connect, retrying every ``reconnect_wait_s`` until the deadline; once connected, nats-py reconnects
    forever (and replays our subscriptions) whenever the server goes away."""
    client = NatsClient()

    async def on_disconnect() -> None:
        if not (client.is_closed or client.is_draining):
            log.warning("nats.disconnected", client=options.name)

    async def on_reconnect() -> None:
        log.info("nats.reconnected", client=options.name)

    async def on_error(error: Exception) -> None:
        if PERMISSIONS_VIOLATION in str(error).lower():  # a role's permissions miss a subject: say so
            log.warning("nats.permission_refused", client=options.name, user=options.user, error=str(error))
            return
        log.debug("nats.error", client=options.name, error=str(error))

    connecting = client.connect(
        servers=list(options.servers),
        name=options.name,
        connect_timeout=options.connect_timeout_s,  # type: ignore[arg-type]  # floats work
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=options.reconnect_wait_s,  # type: ignore[arg-type]  # floats work
        user=options.user,
        password=options.password,
        inbox_prefix=options.inbox_prefix or DEFAULT_INBOX_PREFIX,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
    )
    try:
        await asyncio.wait_for(connecting, timeout=options.initial_connect_deadline_s)
    except (OSError, nats.errors.Error, TimeoutError) as error:
        await client.close()
        raise Unavailable(
            f"cannot connect to NATS at {', '.join(options.servers)} within "
            f"{options.initial_connect_deadline_s:g}s: {client.last_error or error!r}"
        ) from error
    return client


def encode_error(error: MetalbusError) -> tuple[bytes, dict[str, str]]:
    return error.to_envelope().model_dump_json().encode(), {ERROR_HEADER: error.code.value}


def decode_reply(reply_model: type[ReplyT], msg: Msg) -> ReplyT:
    """Turn a reply message into the typed reply, or raise the typed error it carries."""
    if msg.headers and ERROR_HEADER in msg.headers:
        try:
            envelope = ErrorEnvelope.model_validate_json(msg.data)
        except ValidationError as error:
            raise Internal(f"unreadable error reply on {msg.subject}: {error}") from error
        raise error_from_envelope(envelope)
    try:
        return reply_model.model_validate_json(msg.data)
    except ValidationError as error:
        raise Internal(f"reply does not match {reply_model.__name__}: {error}") from error


def describe_validation_error(model: type[Message], error: ValidationError) -> str:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in item['loc']) or '<body>'}: {item['msg']}" for item in error.errors()
    )
    return f"invalid {model.__name__}: {problems}"


class Bus:
    """A connected NATS client with typed request, gather, serve and event helpers."""

    def __init__(self, client: NatsClient, *, max_concurrency: int = 256) -> None:
        self.client = client
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_concurrency)
        self.dropped_requests = 0
        self._served: list[Subscription] = []
        self._jetstream: JetStreamContext | None = None

    @classmethod
    async def connect(cls, options: ConnectOptions, *, max_concurrency: int = 256) -> "Bus":
        return cls(await connect_nats(options), max_concurrency=max_concurrency)

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected)

    async def request(
        self,
        subject: RequestSubject[RequestT, ReplyT],
        message: RequestT,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        **params: str,
    ) -> ReplyT:
        """Send a typed request and return the typed reply; raise the typed error the server sent,
        :class:`Timeout` when nobody answers in time, :class:`Unavailable` when nobody listens."""
        name = subject.format(**params)
        try:
            msg = await self.client.request(name, message.to_json_bytes(), timeout=timeout)
        except nats.errors.NoRespondersError as error:
            raise Unavailable(f"no service is answering on {name}") from error
        except nats.errors.TimeoutError as error:
            raise Timeout(f"no reply on {name} within {timeout:g}s") from error
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError) as error:
            raise Unavailable(f"NATS connection not usable for {name}: {error!r}") from error
        return decode_reply(subject.reply, msg)

    async def gather(
        self,
        subject: RequestSubject[RequestT, ReplyT],
        message: RequestT,
        *,
        window: float = 0.5,
        **params: str,
    ) -> list[ReplyT]:
        """Scatter a request to every subscriber (a subject without queue group) and collect the typed
        replies that arrive within ``window`` seconds; error replies and unreadable ones are skipped."""
        inbox = self.client.new_inbox()
        replies: list[ReplyT] = []

        async def collect(msg: Msg) -> None:
            if msg.headers and msg.headers.get("Status") == NO_RESPONDERS_STATUS:
                return
            try:
                replies.append(decode_reply(subject.reply, msg))
            except MetalbusError as error:
                log.debug("bus.gather_skipped", subject=msg.subject, error=str(error))

        try:
            subscription = await self.client.subscribe(inbox, cb=collect)
            try:
                await self.client.publish(subject.format(**params), message.to_json_bytes(), reply=inbox)
                await self.client.flush(timeout=window)  # type: ignore[arg-type]  # floats work
                await asyncio.sleep(window)
            finally:
                await subscription.unsubscribe()
        except nats.errors.Error as error:
            raise Unavailable(f"NATS not usable for a roll call on {subject.pattern}: {error!r}") from error
        return replies

    async def serve(
        self,
        subject: RequestSubject[RequestT, ReplyT],
        handler: Callable[[RequestT], Awaitable[ReplyT]],
        *,
        queue: str | None = None,
        subscribe_to: str | None = None,
    ) -> Subscription:
        """Answer requests on ``subject`` with ``handler``.

        Malformed payloads get a ``bad_request`` error reply, handler errors become their typed error
        reply, unexpected exceptions an ``internal`` one; the subscription survives all of them. Each
        request runs in its own task (bounded by ``max_concurrency``), so a slow handler does not stall
        the subscription. ``subscribe_to`` overrides the subscription (e.g. a wildcard of a pattern).
        """
        group = queue if queue is not None else (subject.queue or "")
        target = subscribe_to if subscribe_to is not None else subject.pattern

        async def on_message(msg: Msg) -> None:
            await self._slots.acquire()
            task = asyncio.create_task(self._answer(subject, handler, msg))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

        subscription = await self.client.subscribe(target, queue=group, cb=on_message)
        self._served.append(subscription)
        # When serve() returns, the server knows the subscription: a request sent next will reach it.
        # nats-py queues SUB for its flusher task but writes PING straight to the socket, so a plain flush()
        # can be answered before the SUB is even sent: first wait until the queued commands are written.
        await self.client._flush_pending(force_flush=True)
        await self.client.flush(timeout=DEFAULT_TIMEOUT_S)  # type: ignore[arg-type]  # floats work
        return subscription

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()

    async def _answer(
        self,
        subject: RequestSubject[RequestT, ReplyT],
        handler: Callable[[RequestT], Awaitable[ReplyT]],
        msg: Msg,
    ) -> None:
        try:
            request = subject.request.model_validate_json(msg.data)
        except ValidationError as error:
            self.dropped_requests += 1
            log.debug("bus.malformed_request", subject=msg.subject, error=str(error))
            await self._respond_error(msg, BadRequest(describe_validation_error(subject.request, error)))
            return
        try:
            reply = await handler(request)
        except MetalbusError as error:
            await self._respond_error(msg, error)
            return
        except Exception as error:
            log.exception("bus.handler_failed", subject=msg.subject)
            await self._respond_error(msg, Internal(f"{type(error).__name__}: {error}"))
            return
        if msg.reply:
            await self._publish_reply(msg.reply, reply.to_json_bytes(), None)

    async def _respond_error(self, msg: Msg, error: MetalbusError) -> None:
        if msg.reply:
            body, headers = encode_error(error)
            await self._publish_reply(msg.reply, body, headers)

    async def _publish_reply(self, inbox: str, body: bytes, headers: dict[str, str] | None) -> None:
        try:
            await self.client.publish(inbox, body, headers=headers)
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as error:
            log.warning("bus.reply_lost", inbox=inbox, error=str(error))

    async def ensure_streams(self, streams: tuple[StreamSpec, ...] = STREAMS, *, replicas: int = 1) -> None:
        """Create (or update) the JetStream streams events are kept in, each on ``replicas`` servers of the
        cluster (3 in a 3-node cluster: the events survive losing one)."""
        jetstream = self.client.jetstream()
        for spec in streams:
            config = StreamConfig(
                name=spec.name, subjects=list(spec.subjects), max_age=spec.max_age_s, num_replicas=replicas
            )
            try:
                try:
                    await jetstream.add_stream(config)
                except nats.js.errors.BadRequestError:
                    await jetstream.update_stream(config)
            except (nats.errors.Error, TimeoutError) as error:
                raise Unavailable(f"JetStream refused stream {spec.name}: {error!r}") from error

    async def publish_event(
        self, subject: EventSubject[EventT], event: EventT, *, msg_id: str | None = None, **params: str
    ) -> None:
        """Publish an event into JetStream and wait for the stream's acknowledgement. ``msg_id`` (the
        outbox sequence) lets the stream drop a duplicate when a publish is repeated after a crash."""
        await self.publish_raw_event(subject.format(**params), event.to_json_bytes(), msg_id=msg_id)

    async def publish_raw_event(self, name: str, payload: bytes, *, msg_id: str | None = None) -> None:
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        try:
            await self.client.jetstream().publish(name, payload, timeout=DEFAULT_TIMEOUT_S, headers=headers)
        except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError) as error:
            raise Unavailable(f"event stream did not acknowledge {name}") from error

    async def publish_raw_events(self, events: Sequence[tuple[str, bytes, str]]) -> None:
        """Publish ``(subject, payload, msg_id)`` events in order without waiting for each acknowledgement
        before sending the next (they still reach the stream in order: one connection), then wait for all.
        Any missing acknowledgement raises Unavailable; the caller publishes the lot again and the stream
        drops what it already holds by ``Nats-Msg-Id``."""
        if self._jetstream is None:
            self._jetstream = self.client.jetstream()
        try:
            acknowledgements = [
                await self._jetstream.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
                for subject, payload, msg_id in events
            ]
            async with asyncio.timeout(DEFAULT_TIMEOUT_S):
                await asyncio.gather(*acknowledgements)
        except (TimeoutError, nats.errors.Error) as error:
            raise Unavailable(f"event stream did not acknowledge {len(events)} events: {error!r}") from error

    async def drain(self) -> None:
        """Stop taking requests (another replica in the queue group answers them now), finish the ones in
        flight, then close. Works whether or not NATS is reachable at that moment."""
        for subscription in self._served:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        self._served.clear()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if not self.client.is_closed:
            try:
                await self.client.drain()
            except nats.errors.Error:
                await self.client.close()

    async def close(self) -> None:
        """Close at once (for short-lived clients that serve nothing)."""
        if not self.client.is_closed:
            await self.client.close()
