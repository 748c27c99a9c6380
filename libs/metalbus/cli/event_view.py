"""How events read: the API's event records (listed or streamed) as one sentence each, or as a table."""

import json
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from metalbus.cli.client import JsonObject
from metalbus.cli.output import short_time
from metalbus.cli.sse import ServerSentEvent


@dataclass(frozen=True)
class EventRecord:
    """One event of the stream METALBUS_EVENTS: its stream sequence, kind (``machine``, ``power``, …), payload."""

    sequence: int | None
    kind: str
    subject: str | None
    data: JsonObject

    def as_json(self) -> JsonObject:
        """Like an item of the API's event listing (``subject`` only when known: SSE frames carry the kind)."""
        known_subject = {"subject": self.subject} if self.subject is not None else {}
        return {"sequence": self.sequence, **known_subject, "kind": self.kind, "data": self.data}


def kind_of_subject(subject: str) -> str:
    """``events.machine.x7kq2m`` → ``machine``."""
    parts = subject.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "events" else subject


def record_from_listing(item: JsonObject) -> EventRecord:
    subject = str(item.get("subject", ""))
    data = item.get("data")
    return EventRecord(
        sequence=_as_int(item.get("sequence")),
        kind=kind_of_subject(subject),
        subject=subject or None,
        data=data if isinstance(data, dict) else {},
    )


def record_from_sse(event: ServerSentEvent) -> EventRecord:
    """The SSE ``data`` is either the event itself or ``{"sequence", "subject", "data"}`` like the listing."""
    try:
        payload: Any = json.loads(event.data)
    except ValueError:
        payload = {"text": event.data}
    if isinstance(payload, dict) and isinstance(payload.get("data"), dict) and "subject" in payload:
        record = record_from_listing(payload)
        sequence = record.sequence if record.sequence is not None else _as_int(event.id)
        kind = record.kind if record.subject else event.event
        return EventRecord(sequence=sequence, kind=kind, subject=record.subject, data=record.data)
    return EventRecord(
        sequence=_as_int(event.id),
        kind=event.event,
        subject=None,
        data=payload if isinstance(payload, dict) else {"value": payload},
    )


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def describe_event(record: EventRecord) -> str:
    """``x7kq2m: new -> commissioning (commission)`` and the like, by kind."""
    data = record.data
    match record.kind:
        case "machine":
            reason = f": {data['reason']}" if data.get("reason") else ""
            action = f" ({data['action']})" if data.get("action") else ""
            if data.get("from_status") is None:
                return f"{data.get('system_id')}: added as {data.get('to_status')}{action}{reason}"
            return f"{data.get('system_id')}: {data['from_status']} -> {data.get('to_status')}{action}{reason}"
        case "power":
            via = f" via {data['rack_id']}" if data.get("rack_id") else ""
            error = f" error: {data['error']}" if data.get("error") else ""
            return f"{data.get('system_id')}: power {data.get('action')} -> {data.get('state')}{via}{error}"
        case "result":
            return f"{data.get('system_id')}: script {data.get('name')} exited {data.get('exit_status')}"
        case "lease":
            lease: JsonObject = data["lease"] if isinstance(data.get("lease"), dict) else {}
            return (
                f"lease {lease.get('ip')} {lease.get('state')} to {lease.get('mac')} "
                f"(subnet {lease.get('subnet_id')}, {lease.get('rack_id')})"
            )
        case "rack":
            return f"{data.get('rack_id')}: {data.get('service')} {data.get('kind')} ({data.get('hostname')})"
        case _:
            return json.dumps(data, separators=(",", ":"))


def event_line(record: EventRecord) -> str:
    sequence = f"#{record.sequence}" if record.sequence is not None else "#?"
    return f"{short_time(record.data.get('at'))}  {sequence:>7}  {record.kind:<7}  {describe_event(record)}"


def events_table(records: list[EventRecord]) -> Table:
    table = Table(caption=f"{len(records)} event{'' if len(records) == 1 else 's'}")
    for column in ("seq", "at", "kind", "what"):
        table.add_column(column, overflow="fold")
    for record in records:
        table.add_row(
            str(record.sequence) if record.sequence is not None else "-",
            short_time(record.data.get("at")),
            record.kind,
            describe_event(record),
        )
    return table
