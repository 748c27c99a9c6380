"""Events for integrators: a page of history after a stream sequence, or a live Server-Sent Events stream.

Both read the JetStream stream METALBUS_EVENTS directly. A stream frame is ``id: <stream seq>``, ``event:
<kind>``, ``data: <json>``; a ``: keepalive`` comment goes out when nothing happened for a while, and a client
resumes with ``Last-Event-ID``. Open streams are counted and bounded, each ends after ``event_stream_max_s``, and
each one's consumer is closed when the client goes away (or when the api stops).
"""

import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from metalbus.contracts.errors import MetalbusError, Unavailable
from metalbus_api.auth import require_api_key
from metalbus_api.event_store import (
    CONNECTED_FRAME,
    KEEPALIVE_FRAME,
    EventFollower,
    EventKind,
    EventPage,
    EventReader,
    filter_subject,
    sse_frame,
)
from metalbus_api.metrics import ApiMetrics
from metalbus_api.openapi_responses import error_responses
from metalbus_api.settings import ApiSettings

router = APIRouter(prefix="/api/v1", tags=["events"], dependencies=[Depends(require_api_key)])

MAX_SEQUENCE = 2**63 - 2
KindQuery = Annotated[EventKind | None, Query(description="Only events of this kind.")]
IdQuery = Annotated[
    str | None,
    Query(
        pattern=r"^[A-Za-z0-9_-]{1,128}$",
        description="Only events about this id (system id, subnet id or rack id).",
    ),
]


class EventStreams:
    """The open event streams: bounded in number, each closed when its client leaves, all at shutdown."""

    def __init__(self, metrics: ApiMetrics, *, limit: int) -> None:
        self._metrics = metrics
        self._limit = limit
        self._open: set[EventFollower] = set()
        self._opening = 0

    async def open(self, reader: EventReader, subject: str, *, after: int | None) -> EventFollower:
        if len(self._open) + self._opening >= self._limit:
            raise Unavailable(f"{self._limit} event streams are open already; try again later")
        self._opening += 1
        try:
            follower = await reader.follow(subject, after=after)
        finally:
            self._opening -= 1
        self._open.add(follower)
        self._metrics.open_event_streams.set(len(self._open))
        return follower

    async def close(self, follower: EventFollower) -> None:
        await follower.close()
        self._open.discard(follower)
        self._metrics.open_event_streams.set(len(self._open))

    async def close_all(self) -> None:
        for follower in list(self._open):
            await self.close(follower)

    def __len__(self) -> int:
        return len(self._open)


async def event_frames(
    follower: EventFollower,
    streams: EventStreams,
    *,
    keepalive_s: float,
    max_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[bytes]:
    """SSE frames until ``max_s`` has passed, NATS fails, or the client leaves (then this is cancelled)."""
    ends = clock() + max_s
    try:
        yield CONNECTED_FRAME
        while (remaining := ends - clock()) > 0:
            try:
                record = await follower.next(min(keepalive_s, remaining))
            except MetalbusError:
                return  # the client resumes from its Last-Event-ID
            yield sse_frame(record) if record is not None else KEEPALIVE_FRAME
    finally:
        await streams.close(follower)


@router.get("/events", response_model=EventPage, responses=error_responses())
async def event_history(
    request: Request,
    after: Annotated[int, Query(ge=0, le=MAX_SEQUENCE, description="Stream sequence to start after.")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Capped by the api's events_page_max.")] = 100,
    kind: KindQuery = None,
    id: IdQuery = None,
) -> EventPage:
    """Events with a stream sequence above ``after``, oldest first; page on with the last sequence."""
    settings: ApiSettings = request.app.state.settings
    reader: EventReader = request.app.state.events
    events = await reader.history(filter_subject(kind, id), after=after, limit=min(limit, settings.events_page_max))
    return EventPage(events=events)


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "text/event-stream: `id: <stream seq>`, `event: <kind>`, `data: <json>` per event",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **error_responses(),
    },
)
async def event_stream(
    request: Request,
    kind: KindQuery = None,
    id: IdQuery = None,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_SEQUENCE, description="Resume after this stream sequence."),
    ] = None,
) -> StreamingResponse:
    """Every new event as it happens (from after ``Last-Event-ID`` when given)."""
    settings: ApiSettings = request.app.state.settings
    streams: EventStreams = request.app.state.event_streams
    follower = await streams.open(request.app.state.events, filter_subject(kind, id), after=last_event_id)
    frames = event_frames(
        follower, streams, keepalive_s=settings.event_stream_keepalive_s, max_s=settings.event_stream_max_s
    )
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(streams.close, follower),  # if the body never started
    )
