"""`metalbus events`: the event stream METALBUS_EVENTS, listed page by page or followed live (SSE)."""

import time
from enum import StrEnum
from typing import Annotated

import typer

from metalbus.cli.client import ApiUnreachable, MetalbusApi, StreamIdle
from metalbus.cli.event_view import EventRecord, event_line, events_table, record_from_listing, record_from_sse
from metalbus.cli.output import emit_json, emit_json_line, show
from metalbus.cli.session import JsonOption, ProfileOption, api_session

FOLLOW_READ_TIMEOUT_S = 60.0  # the API sends a keep-alive every 15 s: a minute of silence is a dead connection
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class EventKind(StrEnum):
    MACHINE = "machine"
    LEASE = "lease"
    POWER = "power"
    RESULT = "result"
    RACK = "rack"


def show_events(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events as they happen.")] = False,
    kind: Annotated[EventKind | None, typer.Option(help="Only events of this kind.")] = None,
    object_id: Annotated[
        str | None, typer.Option("--id", help="Only events about this machine, subnet or rack id.")
    ] = None,
    after: Annotated[int | None, typer.Option(min=0, help="Start after this stream sequence.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Without --follow: events to list.")] = 100,
    count: Annotated[int | None, typer.Option(min=1, help="With --follow: stop after this many events.")] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Events (machine status changes, power, script results, leases, racks), oldest first."""
    kind_value = kind.value if kind else None
    with api_session(ctx, profile) as api:
        if not follow:
            listing = api.list_events(after=after, limit=limit, kind=kind_value, object_id=object_id)
            if as_json:
                emit_json(listing)
            else:
                show(events_table([record_from_listing(item) for item in listing.get("events", [])]))
            return
        try:
            follow_events(api, kind_value, object_id, after, count, as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def follow_events(
    api: MetalbusApi, kind: str | None, object_id: str | None, after: int | None, count: int | None, as_json: bool
) -> None:
    """Print each event as it arrives; reconnect (resuming after the last one seen) when the stream drops."""
    last_event_id = str(after) if after is not None else None
    printed, failures, connected_once = 0, 0, False
    while True:
        try:
            with api.event_stream(
                kind=kind, object_id=object_id, last_event_id=last_event_id, read_timeout_s=FOLLOW_READ_TIMEOUT_S
            ) as stream:
                connected_once, failures = True, 0
                try:
                    for event in stream.events():
                        print_event(record_from_sse(event), as_json)
                        printed += 1
                        if count is not None and printed >= count:
                            return
                finally:
                    last_event_id = stream.decoder.last_event_id
            problem = "the API closed the event stream"
        except (ApiUnreachable, StreamIdle) as error:
            if not connected_once:
                raise  # never connected at all: a plain failure, not something to wait out
            problem = f"event stream lost: {error}"
        delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
        failures += 1
        typer.echo(f"metalbus: {problem}; reconnecting in {delay:g} s", err=True)
        time.sleep(delay)


def print_event(record: EventRecord, as_json: bool) -> None:
    if as_json:
        emit_json_line(record.as_json())
    else:
        typer.echo(event_line(record))
