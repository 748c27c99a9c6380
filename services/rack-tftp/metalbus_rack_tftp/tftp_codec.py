"""TFTP packets as bytes and back (RFC 1350, options of RFC 2347), and the option negotiation of a read request.

Pure functions: no I/O, no asyncio, no logging. Decoding raises only ``MalformedPacket``; the server drops and counts
such datagrams. Option negotiation (blksize RFC 2348, timeout and tsize RFC 2349, windowsize RFC 7440) turns the
options a client asked for into the options a transfer uses and the ones its OACK acknowledges; options the server
does not know, or whose value is invalid, are ignored as RFC 2347 asks. ``tsize`` is not acknowledged for an empty
file: curl takes ``tsize 0`` in an OACK for an error, and leaving an option out is always allowed.
"""

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
DEFAULT_BLKSIZE = 512
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 255
MAX_WINDOWSIZE = 65535
BLOCK_NUMBERS = 0x10000
MAX_NUMBER_DIGITS = 20
TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"

_HEADER = struct.Struct("!HH")
_OPCODE = struct.Struct("!H")


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


class MalformedPacket(ValueError):
    """The datagram is not a TFTP packet (too short, unknown opcode, missing NUL terminator, bad option list)."""


@dataclass(frozen=True)
class Request:
    """RRQ or WRQ: the filename as sent, the transfer mode (lower-case) and the options (names lower-case)."""

    opcode: Opcode
    filename: str
    mode: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Data:
    block: int
    payload: bytes


@dataclass(frozen=True)
class Ack:
    block: int


@dataclass(frozen=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True)
class OptionAck:
    options: Mapping[str, str]


Packet = Request | Data | Ack | Error | OptionAck


# -- decoding -------------------------------------------------------------------------------------------------
def decode_packet(datagram: bytes) -> Packet:
    """The packet in ``datagram``; ``MalformedPacket`` if it is not one."""
    if len(datagram) < 2:
        raise MalformedPacket("shorter than an opcode")
    (opcode,) = _OPCODE.unpack_from(datagram)
    if opcode in (Opcode.RRQ, Opcode.WRQ):
        return _decode_request(Opcode(opcode), datagram)
    if opcode == Opcode.DATA:
        return Data(_block_of(datagram), datagram[4:])
    if opcode == Opcode.ACK:
        if len(datagram) != 4:
            raise MalformedPacket(f"ACK of {len(datagram)} bytes")
        return Ack(_block_of(datagram))
    if opcode == Opcode.ERROR:
        code = _block_of(datagram)
        message, _ = _zero_terminated(datagram, 4) if len(datagram) > 4 else ("", 4)
        return Error(code, message)
    if opcode == Opcode.OACK:
        return OptionAck(_options(_strings(datagram, 2)))
    raise MalformedPacket(f"unknown opcode {opcode}")


def _block_of(datagram: bytes) -> int:
    if len(datagram) < 4:
        raise MalformedPacket("shorter than opcode and block number")
    block: int = _HEADER.unpack_from(datagram)[1]
    return block


def _zero_terminated(datagram: bytes, start: int) -> tuple[str, int]:
    end = datagram.find(0, start)
    if end < 0:
        raise MalformedPacket("string without its NUL terminator")
    return datagram[start:end].decode(TEXT_ENCODING, TEXT_ERRORS), end + 1


def _strings(datagram: bytes, start: int) -> list[str]:
    strings: list[str] = []
    position = start
    while position < len(datagram):
        text, position = _zero_terminated(datagram, position)
        strings.append(text)
    return strings


def _options(strings: list[str]) -> dict[str, str]:
    """Name/value pairs; names are case-insensitive (lower-cased here); the first of a repeated name wins."""
    if len(strings) % 2:
        raise MalformedPacket("an option without its value")
    options: dict[str, str] = {}
    for name, value in zip(strings[::2], strings[1::2], strict=True):
        options.setdefault(name.lower(), value)
    return options


def _decode_request(opcode: Opcode, datagram: bytes) -> Request:
    strings = _strings(datagram, 2)
    if len(strings) < 2:
        raise MalformedPacket("request without filename and mode")
    filename, mode, *options = strings
    if not filename:
        raise MalformedPacket("request with an empty filename")
    return Request(opcode, filename, mode.lower(), _options(options))


# -- encoding -------------------------------------------------------------------------------------------------
def encode_data(block: int, payload: bytes | memoryview) -> bytes:
    """A DATA packet; ``block`` is taken modulo 65536 (block numbers roll over to 0 after 65535)."""
    return _HEADER.pack(Opcode.DATA, block % BLOCK_NUMBERS) + payload


def encode_ack(block: int) -> bytes:
    return _HEADER.pack(Opcode.ACK, block % BLOCK_NUMBERS)


def encode_error(code: int, message: str) -> bytes:
    return _HEADER.pack(Opcode.ERROR, code) + message.encode(TEXT_ENCODING, TEXT_ERRORS) + b"\0"


def encode_option_ack(options: Mapping[str, str]) -> bytes:
    return _OPCODE.pack(Opcode.OACK) + _encode_strings(_flatten(options))


def encode_request(
    opcode: Opcode, filename: str, mode: str = "octet", options: Mapping[str, str] | None = None
) -> bytes:
    """An RRQ or WRQ (the server never sends one; clients in tests and the benchmark do)."""
    return _OPCODE.pack(opcode) + _encode_strings([filename, mode, *_flatten(options or {})])


def _flatten(options: Mapping[str, str]) -> list[str]:
    return [text for name, value in options.items() for text in (name, value)]


def _encode_strings(strings: list[str]) -> bytes:
    return b"".join(text.encode(TEXT_ENCODING, TEXT_ERRORS) + b"\0" for text in strings)


# -- netascii -------------------------------------------------------------------------------------------------
def to_netascii(content: bytes) -> bytes:
    """``content`` as netascii: CR becomes CR NUL and LF becomes CR LF (RFC 764 via RFC 1350)."""
    return content.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


# -- option negotiation ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NegotiationLimits:
    """What the server allows: the largest block and window it sends (a client asking more gets these)."""

    max_blksize: int = 1468
    max_windowsize: int = 64


@dataclass(frozen=True)
class TransferOptions:
    """The options a read transfer runs with; ``timeout_s`` is None when the client did not negotiate one."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout_s: int | None = None


@dataclass(frozen=True)
class Negotiated:
    """The transfer's options, and what the OACK says (empty: no OACK, the transfer starts with DATA block 1)."""

    options: TransferOptions
    acknowledged: Mapping[str, str]


def negotiate(requested: Mapping[str, str], file_size: int, limits: NegotiationLimits) -> Negotiated:
    """Accepted options of a read request for a file of ``file_size`` bytes; unknown or invalid options ignored."""
    acknowledged: dict[str, str] = {}
    blksize = _integer_in(requested.get("blksize"), MIN_BLKSIZE, MAX_BLKSIZE)
    if blksize is not None:
        blksize = min(blksize, limits.max_blksize)
        acknowledged["blksize"] = str(blksize)
    timeout_s = _integer_in(requested.get("timeout"), MIN_TIMEOUT_S, MAX_TIMEOUT_S)
    if timeout_s is not None:
        acknowledged["timeout"] = str(timeout_s)
    if file_size > 0 and _integer_in(requested.get("tsize"), 0, None) is not None:
        acknowledged["tsize"] = str(file_size)
    windowsize = _integer_in(requested.get("windowsize"), 1, MAX_WINDOWSIZE)
    if windowsize is not None:
        windowsize = min(windowsize, limits.max_windowsize)
        acknowledged["windowsize"] = str(windowsize)
    options = TransferOptions(
        blksize=blksize if blksize is not None else DEFAULT_BLKSIZE,
        windowsize=windowsize if windowsize is not None else 1,
        timeout_s=timeout_s,
    )
    return Negotiated(options, acknowledged)


def _integer_in(text: str | None, lowest: int, highest: int | None) -> int | None:
    """``text`` as a decimal integer within bounds, or None (absent, not a number, or out of range)."""
    if text is None or len(text) > MAX_NUMBER_DIGITS or not text.isascii() or not text.strip().isdigit():
        return None
    value = int(text)
    if value < lowest or (highest is not None and value > highest):
        return None
    return value
