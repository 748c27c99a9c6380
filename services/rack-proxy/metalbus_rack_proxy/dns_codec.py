"""DNS wire format (RFC 1035) for a small authoritative-plus-forwarding server: bytes ⇄ dataclasses, no I/O.

Only what rack-proxy needs: parse a query's header and single question, build answers (A, PTR, NS, SOA) and error
replies, and read the header of an upstream reply. Anything unreadable raises :class:`MalformedMessage` — the one
error type; a caller turns it into a counted drop (or a FORMERR when the header was readable).
"""

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE = HEADER.size
QUESTION_TAIL = struct.Struct("!HH")
RECORD_HEAD = struct.Struct("!HHIH")
TCP_LENGTH = struct.Struct("!H")  # every DNS message over TCP is preceded by its length
UDP_PAYLOAD_LIMIT = 512
TCP_PAYLOAD_LIMIT = 65535
MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 63
MAX_POINTER_JUMPS = 16
POINTER_TO_QUESTION = b"\xc0\x0c"  # the question's name always starts right after the header
# The same few names are asked again and again: what follows the header (question and any EDNS record) maps to
# the parsed question. Bounded: cleared when full.
QUESTION_CACHE_SIZE = 4096
_questions_seen: dict[bytes, tuple[str, int, int, bytes]] = {}

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
CLASS_IN = 1


class Rcode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


class RecordType(IntEnum):
    A = 1
    NS = 2
    SOA = 6
    PTR = 12
    AAAA = 28
    ANY = 255


class MalformedMessage(ValueError):
    """The bytes are not a DNS message we can read; ``reason`` says why (for counters and debug logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Header:
    id: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & FLAG_QR)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE_MASK) >> 11

    @property
    def rcode(self) -> int:
        return self.flags & 0x000F


@dataclass(frozen=True, slots=True)
class Query:
    """A query with exactly one question; ``name`` is lower-case without the final dot ("" is the root)."""

    header: Header
    name: str
    qtype: int
    qclass: int
    question_bytes: bytes  # the question section exactly as received, echoed in the reply


@dataclass(frozen=True, slots=True)
class Record:
    """A resource record to answer with; ``name`` is absolute without the final dot."""

    name: str
    rtype: RecordType
    ttl: int
    rdata: bytes


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise MalformedMessage("shorter than a header")
    return Header(*HEADER.unpack_from(data))


def read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (following compression pointers) and the offset just after it in place."""
    labels: list[str] = []
    end: int | None = None
    length_so_far = 0
    for _ in range(MAX_POINTER_JUMPS + MAX_NAME_LENGTH):
        if offset >= len(data):
            raise MalformedMessage("name runs past the end")
        length = data[offset]
        if length == 0:
            return ".".join(labels), (offset + 1 if end is None else end)
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise MalformedMessage("pointer runs past the end")
            if end is None:
                end = offset + 2
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if target >= offset:
                raise MalformedMessage("pointer does not point backwards")
            offset = target
            continue
        if length > MAX_LABEL_LENGTH:
            raise MalformedMessage("label type or length not supported")
        label = data[offset + 1 : offset + 1 + length]
        if len(label) != length:
            raise MalformedMessage("label runs past the end")
        length_so_far += length + 1
        if length_so_far > MAX_NAME_LENGTH:
            raise MalformedMessage("name longer than 255 octets")
        if b"." in label:
            raise MalformedMessage("a dot inside a label")
        labels.append(label.decode("latin-1").lower())
        offset += 1 + length
    raise MalformedMessage("too many labels or pointers")


def parse_query(data: bytes) -> Query:
    """A standard query with one question; MalformedMessage for anything else (responses included)."""
    header = parse_header(data)
    if header.is_response:
        raise MalformedMessage("a response, not a query")
    if header.qdcount != 1:
        raise MalformedMessage("not exactly one question")
    after_header = data[HEADER_SIZE:]
    known = _questions_seen.get(after_header)
    if known is None:
        known = _parse_question(data)
        if len(_questions_seen) >= QUESTION_CACHE_SIZE:
            _questions_seen.clear()
        _questions_seen[after_header] = known
    name, qtype, qclass, question_bytes = known
    return Query(header, name, qtype, qclass, question_bytes)


def _parse_question(data: bytes) -> tuple[str, int, int, bytes]:
    name, offset = read_name(data, HEADER_SIZE)
    if offset + QUESTION_TAIL.size > len(data):
        raise MalformedMessage("question runs past the end")
    qtype, qclass = QUESTION_TAIL.unpack_from(data, offset)
    return name, qtype, qclass, bytes(data[HEADER_SIZE : offset + QUESTION_TAIL.size])


def encode_name(name: str) -> bytes:
    """Wire form of an absolute name given without the final dot; MalformedMessage if it cannot be encoded."""
    if not name:
        return b"\x00"
    parts = []
    for label in name.split("."):
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError as error:
            raise MalformedMessage(f"label {label!r} is not ASCII") from error
        if not 0 < len(raw) <= MAX_LABEL_LENGTH:
            raise MalformedMessage(f"label {label!r} cannot be encoded")
        parts.append(bytes((len(raw),)) + raw)
    wire = b"".join(parts) + b"\x00"
    if len(wire) > MAX_NAME_LENGTH:
        raise MalformedMessage("name longer than 255 octets")
    return wire


def a_rdata(address: IPv4Address) -> bytes:
    return address.packed


def name_rdata(name: str) -> bytes:
    """RDATA of NS and PTR records: one name."""
    return encode_name(name)


def soa_rdata(primary: str, mailbox: str, serial: int, *, refresh: int, retry: int, expire: int, minimum: int) -> bytes:
    return encode_name(primary) + encode_name(mailbox) + struct.pack("!IIIII", serial, refresh, retry, expire, minimum)


def _encode_record(record: Record, question_name: str) -> bytes:
    owner = POINTER_TO_QUESTION if record.name == question_name else encode_name(record.name)
    return owner + RECORD_HEAD.pack(record.rtype, CLASS_IN, record.ttl, len(record.rdata)) + record.rdata


def reply_flags(query_header: Header, rcode: Rcode, *, authoritative: bool, truncated: bool = False) -> int:
    flags = FLAG_QR | FLAG_RA | (query_header.flags & (OPCODE_MASK | FLAG_RD)) | int(rcode)
    if authoritative:
        flags |= FLAG_AA
    if truncated:
        flags |= FLAG_TC
    return flags


def encode_reply(
    query: Query,
    rcode: Rcode,
    answers: Sequence[Record] = (),
    authority: Sequence[Record] = (),
    *,
    authoritative: bool = True,
    limit: int = UDP_PAYLOAD_LIMIT,
) -> bytes:
    """The reply to ``query``; when it would exceed ``limit`` the records are left out and TC is set."""
    sections = [_encode_record(record, query.name) for record in (*answers, *authority)]
    size = HEADER_SIZE + len(query.question_bytes) + sum(len(section) for section in sections)
    truncated = size > limit
    if truncated:
        sections, answers, authority = [], (), ()
    header = HEADER.pack(
        query.header.id,
        reply_flags(query.header, rcode, authoritative=authoritative, truncated=truncated),
        1,
        len(answers),
        len(authority),
        0,
    )
    return header + query.question_bytes + b"".join(sections)


def encode_error_for_header(header: Header, rcode: Rcode) -> bytes:
    """An error reply that echoes no question: for queries whose question could not be read (FORMERR)."""
    return HEADER.pack(header.id, reply_flags(header, rcode, authoritative=False), 0, 0, 0, 0)
