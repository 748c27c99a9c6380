"""Syslog intake: store the lines a rack relays, attribute them to machines by lease, summarise them as events.

A line belongs to the machine whose boot MAC holds a bound, unexpired lease on the line's source address when the
batch is stored. Every line is stored (``syslog_lines``); per machine per batch one ``SyslogEvent`` is recorded in
the outbox (a line is not an event: a boot logs thousands). Retention is bounded in the same transaction, about
every ``TRIM_EVERY_LINES`` lines: beyond the ``LINES_KEPT_PER_MACHINE`` newest lines of a machine (or of the
unattributed lines) the older ones are deleted.
A batch with a ``batch_id`` is stored once however often the rack retries it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address

from metalbus.contracts.syslog import UNATTRIBUTED, SyslogAck, SyslogBatch, SyslogEvent, SyslogMessage
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_SYSLOG, SYSLOG_INTAKE
from metalbus_region.context import RegionContext, Route
from metalbus_region.idempotency import apply_once
from metalbus_region.lease_store import machines_by_address
from metalbus_region.outbox import record_events

LINES_KEPT_PER_MACHINE = 20_000
TRIM_EVERY_LINES = 1_000

IpAddress = IPv4Address | IPv6Address


def routes(ctx: RegionContext) -> list[Route]:
    intake = SyslogIntake(ctx)
    return [(SYSLOG_INTAKE, intake.intake)]


@dataclass(frozen=True)
class StoredLine:
    line_id: int
    system_id: str | None
    severity: int | None
    text: str


class SyslogIntake:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database
        self.outbox = ctx.outbox

    async def intake(self, batch: SyslogBatch) -> SyslogAck:
        if not batch.messages:
            return SyslogAck(stored=0, attributed=0)
        async with self.database.connection() as conn:
            ack = await apply_once(
                conn, batch.batch_id, SYSLOG_INTAKE.pattern, SyslogAck, lambda c: store_batch(c, batch)
            )
        self.outbox.wake()
        return ack


async def store_batch(conn: DbConnection, batch: SyslogBatch) -> SyslogAck:
    owners = await machines_by_address(conn, {message.source_ip for message in batch.messages})
    stored = await insert_lines(conn, batch, owners)
    await record_summaries(conn, batch.rack_id, stored)
    if crosses_trim_mark(stored):
        for system_id in {line.system_id for line in stored}:
            await trim_lines(conn, system_id, LINES_KEPT_PER_MACHINE)
    return SyslogAck(stored=len(stored), attributed=sum(1 for line in stored if line.system_id is not None))


async def insert_lines(conn: DbConnection, batch: SyslogBatch, owners: dict[IpAddress, str]) -> list[StoredLine]:
    messages = batch.messages
    rows = await conn.fetch(
        """
        INSERT INTO syslog_lines (system_id, rack_id, source_ip, received_at, format, facility, severity, hostname,
                                  app_name, proc_id, msg_id, logged_at, structured_data, text, raw)
        SELECT * FROM unnest($1::text[], $2::text[], $3::inet[], $4::timestamptz[], $5::text[], $6::smallint[],
                             $7::smallint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[],
                             $13::text[], $14::text[], $15::text[])
        RETURNING line_id, system_id, severity, text
        """,
        [owners.get(message.source_ip) for message in messages],
        [batch.rack_id] * len(messages),
        [str(message.source_ip) for message in messages],
        [message.received_at for message in messages],
        [message.format.value for message in messages],
        [message.facility for message in messages],
        [message.severity for message in messages],
        *columns_of_text(messages),
    )
    return [StoredLine(row["line_id"], row["system_id"], row["severity"], row["text"]) for row in rows]


def columns_of_text(messages: Sequence[SyslogMessage]) -> list[list[object]]:
    """hostname, app_name, proc_id, msg_id, logged_at, structured_data, text, raw — one column each."""
    return [
        [message.hostname for message in messages],
        [message.app_name for message in messages],
        [message.proc_id for message in messages],
        [message.msg_id for message in messages],
        [message.timestamp for message in messages],
        [message.structured_data for message in messages],
        [message.text for message in messages],
        [message.raw for message in messages],
    ]


async def record_summaries(conn: DbConnection, rack_id: str, stored: list[StoredLine]) -> None:
    by_machine: dict[str | None, list[StoredLine]] = {}
    for line in stored:
        by_machine.setdefault(line.system_id, []).append(line)
    builds = [
        (summary_builder(rack_id, system_id, lines), {"system_id": system_id or UNATTRIBUTED})
        for system_id, lines in by_machine.items()
    ]
    await record_events(conn, EVENT_SYSLOG, builds)


def summary_builder(
    rack_id: str, system_id: str | None, lines: list[StoredLine]
) -> Callable[[int, datetime], SyslogEvent]:
    severities = [line.severity for line in lines if line.severity is not None]

    def build(sequence: int, at: datetime) -> SyslogEvent:
        return SyslogEvent.model_validate(
            {
                "sequence": sequence,
                "system_id": system_id,
                "rack_id": rack_id,
                "lines": len(lines),
                "first_line_id": min(line.line_id for line in lines),
                "last_line_id": max(line.line_id for line in lines),
                "most_severe": min(severities) if severities else None,
                "last_text": lines[-1].text[:512],
                "at": at,
            }
        )

    return build


def crosses_trim_mark(stored: list[StoredLine]) -> bool:
    """Trim about once per ``TRIM_EVERY_LINES`` stored lines (line ids are global), not on every batch."""
    first, last = min(line.line_id for line in stored), max(line.line_id for line in stored)
    return (first - 1) // TRIM_EVERY_LINES != last // TRIM_EVERY_LINES


async def trim_lines(conn: DbConnection, system_id: str | None, keep: int) -> None:
    """Delete a machine's (or, for None, the unattributed) lines older than its ``keep`` newest."""
    owner = "system_id IS NULL AND $1::text IS NULL" if system_id is None else "system_id = $1"
    await conn.execute(
        f"""
        DELETE FROM syslog_lines
         WHERE {owner}
           AND (received_at, line_id) <= (SELECT received_at, line_id FROM syslog_lines WHERE {owner}
                                           ORDER BY received_at DESC, line_id DESC OFFSET $2 LIMIT 1)
        """,
        system_id,
        keep,
    )
