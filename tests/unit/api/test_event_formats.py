"""Event filters, records and SSE frames: pure functions of the events API."""

import asyncio

import pytest

from metalbus_api.event_store import (
    CONNECTED_FRAME,
    KEEPALIVE_FRAME,
    EventKind,
    EventRecord,
    filter_subject,
    kind_of,
    record_of,
    sse_frame,
)
from metalbus_api.metrics import ApiMetrics
from metalbus_api.routes_events import EventStreams, event_frames


@pytest.mark.parametrize(
    ("kind", "event_id", "subject"),
    [
        (None, None, "events.>"),
        (EventKind.MACHINE, None, "events.machine.*"),
        (EventKind.MACHINE, "x7kq2m", "events.machine.x7kq2m"),
        (EventKind.LEASE, "3", "events.lease.3"),
        (EventKind.RACK, "rack-1", "events.rack.rack-1"),
        (None, "x7kq2m", "events.*.x7kq2m"),
    ],
)
def test_kind_and_id_choose_the_stream_filter(kind: EventKind | None, event_id: str | None, subject: str) -> None:
    assert filter_subject(kind, event_id) == subject


def test_every_kind_has_an_event_subject() -> None:
    assert {filter_subject(kind, None) for kind in EventKind} == {
        "events.machine.*",
        "events.lease.*",
        "events.power.*",
        "events.result.*",
        "events.rack.*",
    }


def test_a_frame_carries_the_stream_sequence_the_kind_and_one_line_of_json() -> None:
    record = record_of("events.machine.x7kq2m", 42, b'{\n "system_id": "x7kq2m",\n "to_status": "broken"\n}')
    assert sse_frame(record) == (b'id: 42\nevent: machine\ndata: {"system_id":"x7kq2m","to_status":"broken"}\n\n')


def test_a_payload_that_is_not_a_json_object_is_kept_raw() -> None:
    assert record_of("events.power.x7kq2m", 1, b"not json").data == {"raw": "not json"}
    assert kind_of("events.power.x7kq2m") == "power"


class FakeFollower:
    def __init__(self, records: list[EventRecord | None]) -> None:
        self.records = records
        self.waits: list[float] = []
        self.closed = 0

    async def next(self, timeout_s: float) -> EventRecord | None:
        self.waits.append(timeout_s)
        return self.records.pop(0) if self.records else None

    async def close(self) -> None:
        self.closed += 1


class SteppingClock:
    """Advances by the time each wait asked for (the fake follower does not sleep)."""

    def __init__(self, follower: FakeFollower) -> None:
        self.follower = follower

    def __call__(self) -> float:
        return sum(self.follower.waits)


async def test_frames_send_events_then_keepalives_and_end_after_the_maximum_duration() -> None:
    record = EventRecord(sequence=5, subject="events.machine.x7kq2m", data={"to_status": "broken"})
    follower = FakeFollower([record, None])
    streams = EventStreams(ApiMetrics(), limit=4)
    frames = [
        frame
        async for frame in event_frames(
            follower,  # type: ignore[arg-type]
            streams,
            keepalive_s=15,
            max_s=40,
            clock=SteppingClock(follower),
        )
    ]
    assert frames == [CONNECTED_FRAME, sse_frame(record), KEEPALIVE_FRAME, KEEPALIVE_FRAME]
    assert follower.waits == [15, 15, 10]  # the last wait stops at the maximum duration
    assert follower.closed == 1


async def test_a_stream_cancelled_mid_wait_still_closes_its_follower() -> None:
    class BlockingFollower(FakeFollower):
        async def next(self, timeout_s: float) -> EventRecord | None:
            await asyncio.sleep(3600)
            return None

    follower = BlockingFollower([])
    frames = event_frames(follower, EventStreams(ApiMetrics(), limit=4), keepalive_s=15, max_s=60)  # type: ignore[arg-type]

    async def consume() -> None:
        async for _ in frames:
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert follower.closed == 1
