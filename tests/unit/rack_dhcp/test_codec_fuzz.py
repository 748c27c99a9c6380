"""Robustness of the decoder: whatever reaches UDP port 67, ``decode_message`` returns a ``DhcpMessage`` or raises
``DhcpDecodeError`` with a known reason — never anything else — and what it returns survives re-encoding.

Over 100,000 seeded inputs: every truncation and single-byte corruption of every fixture, random bytes, random
option areas behind a valid header (overload, split and malformed options), and oversized packets up to 64 KiB.
"""

import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from metalbus_rack_dhcp.codec import (
    DECODE_REASONS,
    DhcpDecodeError,
    DhcpEncodeError,
    decode_message,
    encode_message,
)
from metalbus_rack_dhcp.messages import BOOTREPLY, DhcpMessage
from tests.unit.rack_dhcp.wire_fixtures import ALL_FIXTURES, MAC

SEED = 20261125
RANDOM_PACKETS = 40_000
RANDOM_OPTION_AREAS = 45_000
OVERSIZED_PACKETS = 200
MAX_UDP_PAYLOAD = 65_507


def valid_packets() -> list[bytes]:
    """The fixtures plus what our encoder writes with overload and split options."""
    spilling = DhcpMessage(
        op=BOOTREPLY,
        xid=7,
        chaddr=MAC + bytes(10),
        yiaddr=IPv4Address("10.0.2.15"),
        options=((53, b"\x02"), (43, b"v" * 250), (66, b"t" * 60), (67, b"b" * 40), (12, b"h" * 40)),
    )
    split = DhcpMessage(op=BOOTREPLY, xid=8, chaddr=MAC, options=((53, b"\x05"), (43, bytes(range(256)) * 2)))
    return [*ALL_FIXTURES.values(), encode_message(spilling), encode_message(split, max_size=1500)]


def truncations(packets: list[bytes]) -> Iterator[bytes]:
    for packet in packets:
        for length in range(len(packet) + 1):
            yield packet[:length]


def corruptions(packets: list[bytes], rng: random.Random) -> Iterator[bytes]:
    for packet in packets:
        for offset, original in enumerate(packet):
            for value in {0x00, 0xFF, original ^ 0x01, original ^ 0x80, rng.randrange(256)} - {original}:
                yield packet[:offset] + bytes((value,)) + packet[offset + 1 :]


def random_packets(rng: random.Random) -> Iterator[bytes]:
    for _ in range(RANDOM_PACKETS):
        yield rng.randbytes(rng.choice((rng.randrange(240), rng.randrange(240, 1500))))


def random_options(rng: random.Random, budget: int) -> bytes:
    """A stream of plausible and broken options: pads, ends, overloads, message types, wrong lengths."""
    out = bytearray()
    while len(out) < budget:
        code = rng.choice((0, 255, 52, 53, 53, 61, 82, 43, rng.randrange(256)))
        length = rng.choice((0, 1, 2, 4, rng.randrange(256)))
        out += bytes((code, length)) + rng.randbytes(rng.choice((length, length, rng.randrange(length + 2))))
    return bytes(out)


def random_option_areas(packets: list[bytes], rng: random.Random) -> Iterator[bytes]:
    for _ in range(RANDOM_OPTION_AREAS):
        header = bytearray(rng.choice(packets)[:240])
        if rng.random() < 0.3:  # options continued in file and/or sname
            header[108:236] = random_options(rng, 128)[:128].ljust(128, b"\x00")
            header[44:108] = random_options(rng, 64)[:64].ljust(64, b"\x00")
        yield bytes(header) + random_options(rng, rng.randrange(1, 400))


def oversized_packets(packets: list[bytes], rng: random.Random) -> Iterator[bytes]:
    for index in range(OVERSIZED_PACKETS):
        packet = rng.choice(packets)
        size = rng.randrange(8192, MAX_UDP_PAYLOAD + 1)
        tail = size - len(packet)
        match index % 4:
            case 0:  # zero padding far beyond the end option
                yield packet + bytes(tail)
            case 1:  # random garbage after the end option
                yield packet + rng.randbytes(tail)
            case 2:  # thousands of small options, some repeated (RFC 3396 merging at scale)
                yield packet[:240] + b"\x35\x01\x01" + random_options(rng, tail)[: tail - 4] + b"\xff"
            case _:  # one huge option split in 255-byte pieces
                pieces = b"".join(bytes((43, 255)) + rng.randbytes(255) for _ in range(tail // 257))
                yield packet[:240] + b"\x35\x01\x01" + pieces + b"\xff"


@dataclass
class Outcomes:
    decoded: int = 0
    reencoded: int = 0
    too_big_to_reencode: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.decoded + sum(self.rejected.values())


def feed(data: bytes, outcomes: Outcomes) -> None:
    try:
        message = decode_message(data)
    except DhcpDecodeError as error:
        outcomes.rejected[error.reason] += 1
        return
    except Exception as error:
        raise AssertionError(f"{type(error).__name__}: {error} while decoding {data.hex()}") from error
    outcomes.decoded += 1
    try:
        encoded = encode_message(message, max_size=65535)
    except DhcpEncodeError:
        outcomes.too_big_to_reencode += 1
        return
    assert decode_message(encoded) == message, data.hex()
    outcomes.reencoded += 1


def test_decoder_returns_a_message_or_raises_its_own_error_for_100000_inputs() -> None:
    rng = random.Random(SEED)
    packets = valid_packets()
    outcomes = Outcomes()
    started = time.perf_counter()
    for source in (
        truncations(packets),
        corruptions(packets, rng),
        random_packets(rng),
        random_option_areas(packets, rng),
        oversized_packets(packets, rng),
    ):
        for data in source:
            feed(data, outcomes)
    elapsed = time.perf_counter() - started
    print(f"fuzz: {outcomes.total} inputs in {elapsed:.1f} s: {outcomes}")
    assert outcomes.total >= 100_000
    assert outcomes.decoded > 1000 and outcomes.reencoded > 1000
    assert set(outcomes.rejected) <= DECODE_REASONS
    assert set(outcomes.rejected) >= {
        "truncated header",
        "bad magic cookie",
        "bad op",
        "not ethernet",
        "option overruns packet",
        "no end option",
        "bad option overload",
        "no message type",
        "bad message type",
    }
