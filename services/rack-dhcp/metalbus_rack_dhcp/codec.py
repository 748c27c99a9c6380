"""DHCPv4 wire codec: bytes ⇄ ``DhcpMessage`` (RFC 2131/2132, RFC 3396 split options, option 52 overload).

Free functions over a byte cursor, no I/O: ``decode_message`` raises ``DhcpDecodeError`` (its ``reason`` is a
short stable label for the drop counter) for anything malformed; ``encode_message`` raises ``DhcpEncodeError``
when a message cannot be put on the wire. The typed helpers at the end read and write the payloads of the
options metalbus cares about; everything else travels as raw bytes.
"""

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from uuid import UUID

from metalbus_rack_dhcp.messages import (
    BOOTREPLY,
    BOOTREQUEST,
    HTYPE_ETHERNET,
    MAGIC_COOKIE,
    UNSPECIFIED,
    DhcpMessage,
    Option,
)

HEADER_SIZE = 240  # fixed BOOTP header (236 bytes) and the magic cookie
SNAME_SIZE = 64
FILE_SIZE = 128
BOOTP_MINIMUM_SIZE = 300  # RFC 1542: some PXE ROMs drop shorter replies
IP_UDP_HEADERS = 28  # option 57 counts the IP and UDP headers (RFC 2132 §9.10)
DEFAULT_MAX_MESSAGE_SIZE = 576  # the size every client must accept (RFC 2131 §2)
MAX_DATAGRAM_SIZE = 65535
OVERLOAD_FILE = 1
OVERLOAD_SNAME = 2
OVERLOAD_BOTH = 3
IPXE_USER_CLASS = b"iPXE"
CIRCUIT_ID = 1  # option 82 sub-options (RFC 3046)
REMOTE_ID = 2

_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
_OVERFLOW_SIZES = {OVERLOAD_FILE: FILE_SIZE, OVERLOAD_SNAME: SNAME_SIZE}
_PAD = int(Option.PAD)  # plain ints: an IntEnum comparison costs a Python call, and these run per option
_END = int(Option.END)
_ZERO_ADDRESS = bytes(4)

DECODE_REASONS = frozenset(
    {
        "truncated header",
        "bad magic cookie",
        "bad op",
        "not ethernet",
        "option overruns packet",
        "no end option",
        "bad option overload",
        "no message type",
        "bad message type",
        "bad option length",
        "bad string",
        "bad client identifier",
        "bad user class",
        "bad client machine id",
        "bad relay agent information",
    }
)


class DhcpDecodeError(ValueError):
    """The bytes are not a DHCPv4 message we accept; ``reason`` is one of ``DECODE_REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DhcpEncodeError(ValueError):
    """The message cannot be encoded as asked (a field too long, options that do not fit)."""


class _Cursor:
    """Reads bytes front to back; reading past the end raises ``DhcpDecodeError(reason)``."""

    __slots__ = ("_data", "_position", "_reason")

    def __init__(self, data: bytes, reason: str) -> None:
        self._data = data
        self._position = 0
        self._reason = reason

    def at_end(self) -> bool:
        return self._position >= len(self._data)

    def pull_u8(self) -> int:
        return self.pull_bytes(1)[0]

    def pull_bytes(self, length: int) -> bytes:
        end = self._position + length
        if end > len(self._data):
            raise DhcpDecodeError(self._reason)
        value = self._data[self._position : end]
        self._position = end
        return value


# --- messages ---------------------------------------------------------------------------------------------------


def decode_message(data: bytes) -> DhcpMessage:
    """Parse one BOOTP/DHCP payload (the UDP data). Options from ``file``/``sname`` and split options are merged."""
    if len(data) < HEADER_SIZE:
        raise DhcpDecodeError("truncated header")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file, cookie) = (
        _HEADER.unpack_from(data)
    )
    if cookie != MAGIC_COOKIE:
        raise DhcpDecodeError("bad magic cookie")
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DhcpDecodeError("bad op")
    if htype != HTYPE_ETHERNET or hlen != 6:
        raise DhcpDecodeError("not ethernet")
    areas = [_read_option_area(data[HEADER_SIZE:], end_required=True)]
    overload = _overload_of(areas[0])
    if overload & OVERLOAD_FILE:
        areas.append(_read_option_area(file, end_required=False))
        file = b""
    if overload & OVERLOAD_SNAME:
        areas.append(_read_option_area(sname, end_required=False))
        sname = b""
    options = _merge_option_areas(areas)
    message_type = options.get(Option.MESSAGE_TYPE)
    if message_type is None:
        raise DhcpDecodeError("no message type")
    if len(message_type) != 1:
        raise DhcpDecodeError("bad message type")
    return DhcpMessage(
        op=op,
        xid=xid,
        chaddr=chaddr,
        htype=htype,
        hlen=hlen,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_address(ciaddr),
        yiaddr=_address(yiaddr),
        siaddr=_address(siaddr),
        giaddr=_address(giaddr),
        sname=sname.rstrip(b"\x00"),
        file=file.rstrip(b"\x00"),
        options=tuple(options.items()),
    )


def _address(packed: bytes) -> IPv4Address:
    """A header address; 0.0.0.0, which most fields of most requests hold, is one shared object."""
    return UNSPECIFIED if packed == _ZERO_ADDRESS else IPv4Address(packed)


def _read_option_area(area: bytes, *, end_required: bool) -> list[tuple[int, bytes]]:
    """Code, length, payload triples up to END; indexes the bytes directly (it runs once per packet)."""
    found: list[tuple[int, bytes]] = []
    position, size = 0, len(area)
    while position < size:
        code = area[position]
        if code == _PAD:
            position += 1
            continue
        if code == _END:
            return found
        if position + 1 >= size:
            raise DhcpDecodeError("option overruns packet")
        end = position + 2 + area[position + 1]
        if end > size:
            raise DhcpDecodeError("option overruns packet")
        found.append((code, area[position + 2 : end]))
        position = end
    if end_required:
        raise DhcpDecodeError("no end option")
    return found


_OVERLOAD = int(Option.OVERLOAD)  # a plain int: compared once per option of every packet


def _overload_of(options: list[tuple[int, bytes]]) -> int:
    values = [payload for code, payload in options if code == _OVERLOAD]
    if not values:
        return 0
    value = b"".join(values)
    if len(value) != 1 or value[0] not in (OVERLOAD_FILE, OVERLOAD_SNAME, OVERLOAD_BOTH):
        raise DhcpDecodeError("bad option overload")
    return value[0]


def _merge_option_areas(areas: list[list[tuple[int, bytes]]]) -> dict[int, bytes]:
    """RFC 3396: every instance of a code, in options → file → sname order, is one concatenated option."""
    merged: dict[int, bytes] = {}
    for area in areas:
        for code, payload in area:
            if code != _OVERLOAD:
                merged[code] = merged.get(code, b"") + payload
    return merged


def encode_message(message: DhcpMessage, *, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
    """Serialise ``message`` into at most ``max_size`` bytes of IP datagram (option 57 semantics).

    Options keep their order; one longer than 255 bytes is split (RFC 3396). When they do not fit, they spill
    into ``file`` then ``sname`` (option 52) if those fields are empty. The result ends with option 255 and is
    zero-padded to the 300-byte BOOTP minimum.
    """
    if not DEFAULT_MAX_MESSAGE_SIZE <= max_size <= MAX_DATAGRAM_SIZE:
        raise DhcpEncodeError(f"max_size {max_size} is outside {DEFAULT_MAX_MESSAGE_SIZE}..{MAX_DATAGRAM_SIZE}")
    for name, value, size in (
        ("chaddr", message.chaddr, 16),
        ("sname", message.sname, 64),
        ("file", message.file, 128),
    ):
        if len(value) > size:
            raise DhcpEncodeError(f"{name} is {len(value)} bytes, the field holds {size}")
    chunks = [chunk for code, payload in message.options for chunk in _option_chunks(code, payload)]
    free_fields = [
        field for field, used in ((OVERLOAD_FILE, message.file), (OVERLOAD_SNAME, message.sname)) if not used
    ]
    main, overflow = _place_options(chunks, max_size - IP_UDP_HEADERS - HEADER_SIZE, free_fields)
    file = overflow.get(OVERLOAD_FILE, message.file)
    sname = overflow.get(OVERLOAD_SNAME, message.sname)
    try:
        header = _HEADER.pack(
            *(message.op, message.htype, message.hlen, message.hops, message.xid, message.secs, message.flags),
            *(address.packed for address in (message.ciaddr, message.yiaddr, message.siaddr, message.giaddr)),
            *(message.chaddr, sname, file, MAGIC_COOKIE),
        )
    except struct.error as error:
        raise DhcpEncodeError(f"header field out of range: {error}") from error
    return (header + main).ljust(BOOTP_MINIMUM_SIZE, b"\x00")


def _option_chunks(code: int, payload: bytes) -> list[bytes]:
    if not _PAD < code < _END or code == _OVERLOAD:
        raise DhcpEncodeError(f"option code {code} cannot be set (pad, end and overload belong to the codec)")
    if len(payload) <= 255:  # nearly every option: one chunk, no generator
        return [bytes((code, len(payload))) + payload]
    pieces = (payload[start : start + 255] for start in range(0, len(payload), 255))
    return [bytes((code, len(piece))) + piece for piece in pieces]


def _place_options(chunks: list[bytes], main_space: int, free_fields: list[int]) -> tuple[bytes, dict[int, bytes]]:
    """Lay options out in the options field, spilling into the free fields in order; return (main, {field: bytes})."""
    end = bytes((_END,))
    if sum(map(len, chunks)) + 1 <= main_space:
        return b"".join(chunks) + end, {}
    areas: list[list[bytes]] = [[] for _ in range(len(free_fields) + 1)]
    spaces = [main_space - 4] + [_OVERFLOW_SIZES[field] - 1 for field in free_fields]
    area = 0
    for chunk in chunks:
        while area < len(areas) and len(chunk) > spaces[area]:
            area += 1
        if area == len(areas):
            total = sum(map(len, chunks))
            raise DhcpEncodeError(
                f"options need {total} bytes; they do not fit in {main_space} bytes of options field"
                f" with {len(free_fields)} free file/sname field(s) for overload"
            )
        areas[area].append(chunk)
        spaces[area] -= len(chunk)
    used = {field: b"".join(area_chunks) + end for field, area_chunks in zip(free_fields, areas[1:], strict=True)}
    used = {field: content for field, content in used.items() if len(content) > 1}
    overload = sum(used)
    main = b"".join(areas[0]) + bytes((Option.OVERLOAD, 1, overload)) + end
    return main, {field: content.ljust(_OVERFLOW_SIZES[field], b"\x00") for field, content in used.items()}


# --- option payloads --------------------------------------------------------------------------------------------


def decode_ipv4(value: bytes) -> IPv4Address:
    if len(value) != 4:
        raise DhcpDecodeError("bad option length")
    return IPv4Address(value)


def encode_ipv4(address: IPv4Address) -> bytes:
    return address.packed


def decode_ipv4_list(value: bytes) -> tuple[IPv4Address, ...]:
    """Options 3, 6, 42…: one or more addresses."""
    if not value or len(value) % 4:
        raise DhcpDecodeError("bad option length")
    return tuple(IPv4Address(value[start : start + 4]) for start in range(0, len(value), 4))


def encode_ipv4_list(addresses: Iterable[IPv4Address]) -> bytes:
    return b"".join(address.packed for address in addresses)


def decode_u32(value: bytes) -> int:
    """Options 51, 58, 59 (seconds)."""
    if len(value) != 4:
        raise DhcpDecodeError("bad option length")
    return int.from_bytes(value, "big")


def encode_u32(number: int) -> bytes:
    if not 0 <= number <= 0xFFFFFFFF:
        raise DhcpEncodeError(f"{number} does not fit in 32 bits")
    return number.to_bytes(4, "big")


def decode_max_message_size(value: bytes) -> int:
    """Option 57: the largest IP datagram the client accepts."""
    if len(value) != 2:
        raise DhcpDecodeError("bad option length")
    return int.from_bytes(value, "big")


def encode_max_message_size(size: int) -> bytes:
    if not 0 <= size <= MAX_DATAGRAM_SIZE:
        raise DhcpEncodeError(f"{size} does not fit in 16 bits")
    return size.to_bytes(2, "big")


def reply_size_limit(request: DhcpMessage) -> int:
    """The ``max_size`` for a reply to ``request``: its option 57, never below the 576 every client accepts."""
    value = request.option(Option.MAX_MESSAGE_SIZE)
    if value is None or len(value) != 2:
        return DEFAULT_MAX_MESSAGE_SIZE
    return max(DEFAULT_MAX_MESSAGE_SIZE, decode_max_message_size(value))


def decode_string(value: bytes) -> str:
    """Options 12, 15, 56, 66, 67…: UTF-8 text; trailing NULs (sent by some clients) are dropped."""
    try:
        return value.rstrip(b"\x00").decode("utf-8")
    except UnicodeDecodeError as error:
        raise DhcpDecodeError("bad string") from error


def encode_string(text: str) -> bytes:
    return text.encode("utf-8")


def decode_vendor_class(value: bytes) -> str:
    """Option 60, e.g. ``PXEClient:Arch:00007:UNDI:003016`` or ``udhcp 1.35.0``; encode it with ``encode_string``."""
    return decode_string(value)


def decode_parameter_request_list(value: bytes) -> tuple[int, ...]:
    """Option 55: the option codes the client asks for, in its order of preference."""
    return tuple(value)


def encode_parameter_request_list(codes: Iterable[int]) -> bytes:
    try:
        return bytes(codes)
    except ValueError as error:
        raise DhcpEncodeError(f"option codes are 0..255: {error}") from error


@dataclass(frozen=True)
class ClientIdentifier:
    """Option 61: a type (1 = Ethernet, 255 = RFC 4361 IAID/DUID, 0 = opaque) and the identifier itself."""

    kind: int
    value: bytes


def decode_client_identifier(value: bytes) -> ClientIdentifier:
    if len(value) < 2:
        raise DhcpDecodeError("bad client identifier")
    return ClientIdentifier(kind=value[0], value=value[1:])


def encode_client_identifier(identifier: ClientIdentifier) -> bytes:
    return bytes((identifier.kind,)) + identifier.value


def decode_user_class(value: bytes) -> tuple[bytes, ...]:
    """Option 77: RFC 3004 length-prefixed classes, or one plain string (iPXE sends the bare bytes ``iPXE``)."""
    if not value:
        raise DhcpDecodeError("bad user class")
    cursor = _Cursor(value, "bad user class")
    classes: list[bytes] = []
    try:
        while not cursor.at_end():
            length = cursor.pull_u8()
            if length == 0:
                return (value,)
            classes.append(cursor.pull_bytes(length))
    except DhcpDecodeError:
        return (value,)
    return tuple(classes)


def encode_user_class(classes: Sequence[bytes]) -> bytes:
    """RFC 3004 format; each class is 1..255 bytes."""
    if not classes or any(not 0 < len(name) <= 255 for name in classes):
        raise DhcpEncodeError("a user class option holds one or more classes of 1..255 bytes")
    return b"".join(bytes((len(name),)) + name for name in classes)


def is_ipxe_user_class(payload: bytes) -> bool:
    """True when an option 77 payload names iPXE: bare (as iPXE sends it) or among RFC 3004 classes."""
    return payload != b"" and IPXE_USER_CLASS in decode_user_class(payload)


def is_ipxe_request(message: DhcpMessage) -> bool:
    """True when the client is iPXE: its option 77 passes ``is_ipxe_user_class``."""
    value = message.option(Option.USER_CLASS)
    return value is not None and is_ipxe_user_class(value)


def decode_client_architectures(value: bytes) -> tuple[int, ...]:
    """Option 93 (RFC 4578): one or more 16-bit architecture types, see ``ClientArchitecture``."""
    if not value or len(value) % 2:
        raise DhcpDecodeError("bad option length")
    return tuple(int.from_bytes(value[start : start + 2], "big") for start in range(0, len(value), 2))


def encode_client_architectures(architectures: Iterable[int]) -> bytes:
    try:
        return b"".join(architecture.to_bytes(2, "big") for architecture in architectures)
    except OverflowError as error:
        raise DhcpEncodeError(f"architecture types are 0..65535: {error}") from error


def decode_client_machine_id(value: bytes) -> UUID:
    """Option 97 (RFC 4578): type 0 and a 16-byte GUID, first three fields little-endian (the SMBIOS UUID)."""
    if len(value) != 17 or value[0] != 0:
        raise DhcpDecodeError("bad client machine id")
    return UUID(bytes_le=value[1:])


def encode_client_machine_id(machine_id: UUID) -> bytes:
    return b"\x00" + machine_id.bytes_le


@dataclass(frozen=True)
class RelayAgentInformation:
    """Option 82 (RFC 3046) as sub-options; replies echo the request's raw option 82 payload unchanged."""

    suboptions: tuple[tuple[int, bytes], ...]

    def suboption(self, code: int) -> bytes | None:
        return next((payload for number, payload in self.suboptions if number == code), None)

    @property
    def circuit_id(self) -> bytes | None:
        return self.suboption(CIRCUIT_ID)

    @property
    def remote_id(self) -> bytes | None:
        return self.suboption(REMOTE_ID)


def decode_relay_agent_information(value: bytes) -> RelayAgentInformation:
    if not value:
        raise DhcpDecodeError("bad relay agent information")
    cursor = _Cursor(value, "bad relay agent information")
    suboptions: list[tuple[int, bytes]] = []
    while not cursor.at_end():
        code = cursor.pull_u8()
        suboptions.append((code, cursor.pull_bytes(cursor.pull_u8())))
    return RelayAgentInformation(suboptions=tuple(suboptions))


def encode_relay_agent_information(information: RelayAgentInformation) -> bytes:
    if any(not 0 <= code <= 255 or len(payload) > 255 for code, payload in information.suboptions):
        raise DhcpEncodeError("relay agent sub-options have codes 0..255 and payloads up to 255 bytes")
    return b"".join(bytes((code, len(payload))) + payload for code, payload in information.suboptions)
