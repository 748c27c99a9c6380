"""Syslog bytes → parsed lines (RFC 5424, RFC 3164) and TCP stream → frames (RFC 6587); pure, no I/O.

A line that parses as neither format is returned as ``raw`` with its whole text: nothing is dropped. Text is
decoded as UTF-8 (a leading BOM removed); undecodable bytes and NULs become ``\\xNN`` so every line can be stored.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from metalbus.contracts.syslog import MAX_LINE_CHARS, SyslogFormat

NIL = "-"
BOM = b"\xef\xbb\xbf"
MAX_FRAME_BYTES = 64 * 1024
_PRI = re.compile(rb"^<(\d{1,3})>")
_RFC5424_HEAD = re.compile(rb"^1 (\S+) (\S+) (\S+) (\S+) (\S+) ")
_RFC3164_STAMP = re.compile(rb"^([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) ")
_TAG = re.compile(r"^([^\s\[:]{1,48})(?:\[([^\]\s]{1,32})\])?: ?")
_HOSTLESS_TAG = re.compile(rb"[^\s\[:]{1,48}(?:\[[^\]\s]{1,32}\])?:")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_OCTET_COUNT = re.compile(rb"^([1-9]\d{0,5}) ")


@dataclass(frozen=True)
class ParsedLine:
    format: SyslogFormat
    text: str
    facility: int | None = None
    severity: int | None = None
    timestamp: datetime | None = None
    hostname: str | None = None
    app_name: str | None = None
    proc_id: str | None = None
    msg_id: str | None = None
    structured_data: str | None = None
    raw: str | None = None


class MalformedLine(ValueError):
    """The bytes after a valid PRI are not a line of the format they claim."""


def decode_text(data: bytes) -> str:
    """UTF-8 with undecodable bytes and NULs as ``\\xNN``, cut to the longest line the bus carries."""
    text = data.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    return text[:MAX_LINE_CHARS]


def parse_line(data: bytes, now: datetime) -> ParsedLine:
    """One syslog message (a UDP datagram or a TCP frame), trailing newline tolerated."""
    data = data.rstrip(b"\r\n\x00")
    pri = _PRI.match(data)
    if pri is None or int(pri.group(1)) > 191 or (len(pri.group(1)) > 1 and pri.group(1).startswith(b"0")):
        return raw_line(data)
    facility, severity = divmod(int(pri.group(1)), 8)
    body = data[pri.end() :]
    try:
        if body.startswith(b"1 "):
            return parse_rfc5424(body, facility, severity)
        return parse_rfc3164(body, facility, severity, now)
    except MalformedLine:
        return raw_line(data)


def raw_line(data: bytes) -> ParsedLine:
    text = decode_text(data)
    return ParsedLine(format=SyslogFormat.RAW, text=text, raw=text)


def nil_or(value: bytes, max_length: int) -> str | None:
    if value == b"-":
        return None
    if len(value) > max_length:
        raise MalformedLine(f"header field longer than {max_length}")
    return decode_text(value)


def parse_rfc5424(body: bytes, facility: int, severity: int) -> ParsedLine:
    head = _RFC5424_HEAD.match(body)
    if head is None:
        raise MalformedLine("RFC 5424 header incomplete")
    stamp, hostname, app_name, proc_id, msg_id = head.groups()
    rest = body[head.end() :]
    structured_data, message = split_structured_data(rest)
    if message.startswith(BOM):
        message = message[len(BOM) :]
    return ParsedLine(
        format=SyslogFormat.RFC5424,
        text=decode_text(message),
        facility=facility,
        severity=severity,
        timestamp=parse_rfc5424_timestamp(stamp),
        hostname=nil_or(hostname, 255),
        app_name=nil_or(app_name, 48),
        proc_id=nil_or(proc_id, 128),
        msg_id=nil_or(msg_id, 32),
        structured_data=structured_data,
    )


def split_structured_data(rest: bytes) -> tuple[str | None, bytes]:
    """``-`` or ``[id k="v"]…`` (kept as text, escapes untouched), then an optional space and the message."""
    if rest.startswith(b"-"):
        return None, rest[2:] if rest[1:2] == b" " else rest[1:]
    if not rest.startswith(b"["):
        raise MalformedLine("structured data is neither '-' nor '['")
    end = structured_data_end(rest)
    return decode_text(rest[:end]), rest[end + 1 :] if rest[end : end + 1] == b" " else rest[end:]


def structured_data_end(data: bytes) -> int:
    """Index just past the last ``]`` of consecutive SD-ELEMENTs; quoted values may hold escaped ``\\]``."""
    index, in_quotes = 0, False
    while index < len(data):
        byte = data[index : index + 1]
        if in_quotes and byte == b"\\":
            index += 2
            continue
        if byte == b'"':
            in_quotes = not in_quotes
        elif byte == b"]" and not in_quotes and data[index + 1 : index + 2] != b"[":
            return index + 1
        index += 1
    raise MalformedLine("structured data not closed")


def parse_rfc5424_timestamp(stamp: bytes) -> datetime | None:
    if stamp == b"-":
        return None
    text = stamp.decode("ascii", "replace")
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as error:
        raise MalformedLine(f"bad RFC 5424 timestamp {text!r}") from error
    if parsed.tzinfo is None:
        raise MalformedLine("RFC 5424 timestamp without a zone")
    return parsed


def parse_rfc3164(body: bytes, facility: int, severity: int, now: datetime) -> ParsedLine:
    """``Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG``; without a timestamp the whole body is the message (§4.3.3).

    A first word that is a tag (``name:`` or ``name[pid]:``) means the sender left the HOSTNAME out, as busybox
    syslogd -R does (``<13>Nov 25 10:48:22 metalbus-ephemeral: text``): it is then the tag, not a host.
    """
    stamp = _RFC3164_STAMP.match(body)
    if stamp is None:
        return ParsedLine(format=SyslogFormat.RFC3164, text=decode_text(body), facility=facility, severity=severity)
    timestamp = rfc3164_timestamp(stamp.groups(), now)
    after_stamp = body[stamp.end() :]
    hostname, _, rest = after_stamp.partition(b" ")
    if _HOSTLESS_TAG.fullmatch(hostname):
        hostname, rest = b"", after_stamp
    text = decode_text(rest)
    tag = _TAG.match(text)
    app_name, proc_id = (tag.group(1), tag.group(2)) if tag else (None, None)
    return ParsedLine(
        format=SyslogFormat.RFC3164,
        text=text[tag.end() :] if tag else text,
        facility=facility,
        severity=severity,
        timestamp=timestamp,
        hostname=nil_or(hostname, 255) if hostname else None,
        app_name=app_name,
        proc_id=proc_id,
    )


def rfc3164_timestamp(fields: tuple[bytes, ...], now: datetime) -> datetime:
    """No year, no zone: UTC, and the year that puts the stamp nearest to ``now`` (a December line read in
    January is last year's)."""
    month_name, day, hour, minute, second = (field.decode("ascii").strip() for field in fields)
    if month_name not in _MONTHS:
        raise MalformedLine(f"unknown month {month_name!r}")
    month = _MONTHS.index(month_name) + 1
    candidates = []
    for year in (now.year - 1, now.year, now.year + 1):
        try:
            candidates.append(datetime(year, month, int(day), int(hour), int(minute), int(second), tzinfo=UTC))
        except ValueError:
            continue
    if not candidates:
        raise MalformedLine("impossible RFC 3164 date")
    return min(candidates, key=lambda candidate: abs(candidate - now))


class TcpFramer:
    """RFC 6587 framing of one TCP stream: octet-counted (``LEN SP MSG``) or newline-terminated, per frame.

    A frame longer than ``max_frame`` is emitted in pieces rather than dropped; ``finish()`` returns what is left
    when the peer closes (an unterminated last line is still a line)."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buffer += data
        frames: list[bytes] = []
        while self.buffer:
            frame = self.next_frame()
            if frame is None:
                break
            if frame:
                frames.append(frame)
        return frames

    def next_frame(self) -> bytes | None:
        counted = _OCTET_COUNT.match(self.buffer[:8])
        if counted is not None and int(counted.group(1)) <= self.max_frame:
            length, start = int(counted.group(1)), counted.end()
            if len(self.buffer) < start + length:
                return None
            return self.take(start, start + length)
        newline = self.buffer.find(b"\n", 0, self.max_frame)
        if newline >= 0:
            return self.take(0, newline, consumed=newline + 1)
        if len(self.buffer) >= self.max_frame:
            return self.take(0, self.max_frame)
        return None

    def take(self, start: int, end: int, consumed: int | None = None) -> bytes:
        frame = bytes(self.buffer[start:end])
        del self.buffer[: end if consumed is None else consumed]
        return frame.rstrip(b"\r")

    def finish(self) -> list[bytes]:
        rest = bytes(self.buffer).strip(b"\r\n")
        self.buffer.clear()
        return [rest] if rest else []
