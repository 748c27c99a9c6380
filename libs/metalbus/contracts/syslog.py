"""Syslog lines relayed by a rack to the region, and the per-machine summary events they produce.

Volume decision: a booting machine logs thousands of lines, so lines are NOT one JetStream event each. The region
stores every line in PostgreSQL (``syslog_lines``) and records ONE ``SyslogEvent`` per machine per relayed batch
(how many lines, their id range, the most severe level, the last text) on ``events.syslog.<system_id>``, or on
``events.syslog.unknown`` for lines whose source address holds no bound lease of a known machine.
"""

from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import IdempotencyKey, SystemId
from metalbus.contracts.racks import RACK_ID_PATTERN

UNATTRIBUTED = "unknown"
"""The ``system_id`` of the event subject for lines no machine could be found for."""

MAX_LINES_PER_BATCH = 1000
MAX_LINE_CHARS = 16384


class SyslogFormat(StrEnum):
    RFC3164 = "rfc3164"
    RFC5424 = "rfc5424"
    RAW = "raw"
    """The line could not be parsed; ``raw`` holds it whole (it is kept, never dropped)."""


class SyslogMessage(Message):
    """One line as the rack received and parsed it. ``facility``/``severity`` are the PRI's parts (RFC 5424 §6.2.1);
    ``timestamp`` is the sender's own clock (RFC 3164 lines carry no year or zone: the rack assumes UTC and the
    year that puts it nearest to ``received_at``)."""

    model_config = examples(
        {
            "schema_version": 1,
            "received_at": "2026-11-25T06:00:00Z",
            "source_ip": "10.20.0.101",
            "facility": 1,
            "severity": 5,
            "hostname": "node-1",
            "app_name": "cloud-init",
            "proc_id": "812",
            "msg_id": None,
            "timestamp": "2026-11-25T06:00:00Z",
            "structured_data": None,
            "text": "Cloud-init v. 24.1 running 'init-local'",
            "raw": None,
            "format": "rfc5424",
        },
        {
            "schema_version": 1,
            "received_at": "2026-11-25T06:00:01Z",
            "source_ip": "10.20.0.101",
            "text": "garbage \\xff without a PRI",
            "raw": "garbage \\xff without a PRI",
            "format": "raw",
        },
    )

    received_at: datetime
    source_ip: IPv4Address | IPv6Address
    facility: int | None = Field(default=None, ge=0, le=23)
    severity: int | None = Field(default=None, ge=0, le=7)
    hostname: str | None = Field(default=None, max_length=255)
    app_name: str | None = Field(default=None, max_length=255)
    proc_id: str | None = Field(default=None, max_length=128)
    msg_id: str | None = Field(default=None, max_length=128)
    timestamp: datetime | None = None
    structured_data: str | None = Field(default=None, max_length=MAX_LINE_CHARS)
    text: str = Field(max_length=MAX_LINE_CHARS)
    raw: str | None = Field(default=None, max_length=MAX_LINE_CHARS, description="The whole line when unparsed.")
    format: SyslogFormat


class SyslogBatch(Message):
    """Lines one rack received, relayed together; ``batch_id`` makes a retried batch stored once."""

    model_config = examples(
        {
            "schema_version": 1,
            "rack_id": "rack-1",
            "batch_id": "syslog-rack-1-5f0c1d2e9a7b",
            "messages": [
                {
                    "received_at": "2026-11-25T06:00:00Z",
                    "source_ip": "10.20.0.101",
                    "facility": 1,
                    "severity": 5,
                    "hostname": "node-1",
                    "app_name": "cloud-init",
                    "text": "Cloud-init v. 24.1 running 'init-local'",
                    "format": "rfc5424",
                }
            ],
        }
    )

    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    batch_id: IdempotencyKey | None = None
    messages: list[SyslogMessage] = Field(max_length=MAX_LINES_PER_BATCH)


class SyslogAck(Message):
    """``stored`` lines, of which ``attributed`` were matched to a machine by their source address."""

    model_config = examples({"schema_version": 1, "stored": 1, "attributed": 1})

    stored: int = Field(ge=0)
    attributed: int = Field(ge=0)


class SyslogEvent(Message):
    """On ``events.syslog.<system_id>`` (or ``events.syslog.unknown``): a machine logged ``lines`` lines, stored
    as ``syslog_lines`` rows ``first_line_id``..``last_line_id`` (the rows of this machine in that range)."""

    model_config = examples(
        {
            "schema_version": 1,
            "sequence": 12,
            "system_id": "x7kq2m",
            "rack_id": "rack-1",
            "lines": 3,
            "first_line_id": 40,
            "last_line_id": 42,
            "most_severe": 3,
            "last_text": "Cloud-init v. 24.1 finished",
            "at": "2026-11-25T06:00:01Z",
        }
    )

    sequence: int
    system_id: SystemId | None = Field(description="None for lines no machine could be found for.")
    rack_id: str
    lines: int = Field(ge=1)
    first_line_id: int
    last_line_id: int
    most_severe: int | None = Field(default=None, ge=0, le=7, description="The lowest severity number seen.")
    last_text: str
    at: datetime
