"""The TFTP codec against requests real clients sent (captured on loopback from curl, atftp and tftp-hpa), the
packets the server sends, byte-exact encodings, and random bytes that must raise only ``MalformedPacket``."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalbus_rack_tftp.tftp_codec import (
    Ack,
    Data,
    Error,
    ErrorCode,
    MalformedPacket,
    Opcode,
    OptionAck,
    Request,
    decode_packet,
    encode_ack,
    encode_data,
    encode_error,
    encode_option_ack,
    encode_request,
    to_netascii,
)

CURL_RRQ = b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00timeout\x001\x00"
ATFTP_RRQ = (
    b"\x00\x01pxelinux.cfg/01-52-54-00-12-34-56\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x0016\x00"
)
TFTP_HPA_RRQ = b"\x00\x01lpxelinux.0\x00octet\x00"
TFTP_HPA_WRQ = b"\x00\x02up.bin\x00octet\x00"


def test_curl_read_request_carries_filename_mode_and_options() -> None:
    assert decode_packet(CURL_RRQ) == Request(
        Opcode.RRQ, "pxelinux.0", "octet", {"tsize": "0", "blksize": "1468", "timeout": "1"}
    )


def test_atftp_read_request_carries_windowsize() -> None:
    request = decode_packet(ATFTP_RRQ)
    assert isinstance(request, Request)
    assert request.filename == "pxelinux.cfg/01-52-54-00-12-34-56"
    assert request.options == {"tsize": "0", "blksize": "1468", "windowsize": "16"}


def test_plain_requests_without_options_decode_as_read_and_write() -> None:
    assert decode_packet(TFTP_HPA_RRQ) == Request(Opcode.RRQ, "lpxelinux.0", "octet", {})
    assert decode_packet(TFTP_HPA_WRQ) == Request(Opcode.WRQ, "up.bin", "octet", {})


@pytest.mark.parametrize("captured", [CURL_RRQ, ATFTP_RRQ, TFTP_HPA_RRQ, TFTP_HPA_WRQ])
def test_requests_re_encode_to_the_captured_bytes(captured: bytes) -> None:
    request = decode_packet(captured)
    assert isinstance(request, Request)
    assert encode_request(request.opcode, request.filename, request.mode, request.options) == captured


def test_mode_and_option_names_are_case_insensitive_and_the_first_repeated_option_wins() -> None:
    request = decode_packet(b"\x00\x01f\x00OCTET\x00BlkSize\x001024\x00blksize\x00512\x00")
    assert request == Request(Opcode.RRQ, "f", "octet", {"blksize": "1024"})


def test_data_ack_error_and_option_ack_have_their_exact_bytes() -> None:
    assert encode_data(1, b"abc") == b"\x00\x03\x00\x01abc"
    assert encode_ack(7) == b"\x00\x04\x00\x07"
    assert encode_error(ErrorCode.FILE_NOT_FOUND, "nope") == b"\x00\x05\x00\x01nope\x00"
    assert encode_option_ack({"blksize": "1468", "tsize": "42"}) == b"\x00\x06blksize\x001468\x00tsize\x0042\x00"


def test_block_numbers_roll_over_from_65535_to_0() -> None:
    assert encode_data(65535, b"") == b"\x00\x03\xff\xff"
    assert encode_data(65536, b"x") == b"\x00\x03\x00\x00x"
    assert encode_ack(65537) == b"\x00\x04\x00\x01"


@pytest.mark.parametrize(
    "packet",
    [
        Data(3, b"payload"),
        Ack(65535),
        Error(ErrorCode.UNKNOWN_TRANSFER_ID, "unknown transfer ID"),
        OptionAck({"a": "1"}),
    ],
)
def test_server_packets_decode_back_to_themselves(packet: Data | Ack | Error | OptionAck) -> None:
    encoded = {
        Data: lambda p: encode_data(p.block, p.payload),
        Ack: lambda p: encode_ack(p.block),
        Error: lambda p: encode_error(p.code, p.message),
        OptionAck: lambda p: encode_option_ack(p.options),
    }[type(packet)](packet)
    assert decode_packet(encoded) == packet


def test_non_utf8_filename_bytes_survive_decoding_and_encoding() -> None:
    captured = b"\x00\x01caf\xe9.cfg\x00octet\x00"
    request = decode_packet(captured)
    assert isinstance(request, Request)
    assert encode_request(request.opcode, request.filename, request.mode) == captured


@pytest.mark.parametrize(
    ("datagram", "why"),
    [
        (b"", "shorter than an opcode"),
        (b"\x00", "shorter than an opcode"),
        (b"\x00\x09abc", "unknown opcode"),
        (b"\x00\x00", "unknown opcode"),
        (b"\x00\x01file", "NUL terminator"),
        (b"\x00\x01file\x00", "without filename and mode"),
        (b"\x00\x01\x00octet\x00", "empty filename"),
        (b"\x00\x01f\x00octet\x00blksize\x00", "without its value"),
        (b"\x00\x03\x00", "shorter than opcode and block"),
        (b"\x00\x04\x00", "ACK of 3 bytes"),
        (b"\x00\x04\x00\x01\x00", "ACK of 5 bytes"),
        (b"\x00\x05\x00\x01oops", "NUL terminator"),
    ],
)
def test_malformed_datagrams_raise_the_typed_error_with_the_reason(datagram: bytes, why: str) -> None:
    with pytest.raises(MalformedPacket, match=why):
        decode_packet(datagram)


def test_netascii_turns_line_feeds_into_cr_lf_and_bare_cr_into_cr_nul() -> None:
    assert to_netascii(b"a\nb\rc\r\n") == b"a\r\nb\r\0c\r\0\r\n"


@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_only_malformed_packet(datagram: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        decode_packet(datagram)


@given(st.sampled_from([CURL_RRQ, ATFTP_RRQ, TFTP_HPA_RRQ, TFTP_HPA_WRQ]), st.data())
def test_truncated_or_corrupted_requests_decode_or_raise_only_malformed_packet(
    captured: bytes, data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(captured)))
    flip = data.draw(st.integers(0, len(captured) - 1))
    corrupted = bytearray(captured)
    corrupted[flip] = data.draw(st.integers(0, 255))
    for datagram in (captured[:cut], bytes(corrupted)):
        with contextlib.suppress(MalformedPacket):
            decode_packet(datagram)
