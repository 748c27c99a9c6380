"""The DHCPv4 codec against packets real clients sent (wire_fixtures.py): fields, options, byte-exact re-encoding,
option overload and split options, every drop reason, and the typed option payload helpers."""

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from uuid import UUID

import pytest

from metalbus_rack_dhcp.codec import (
    DECODE_REASONS,
    ClientIdentifier,
    DhcpDecodeError,
    DhcpEncodeError,
    RelayAgentInformation,
    decode_client_architectures,
    decode_client_identifier,
    decode_client_machine_id,
    decode_ipv4,
    decode_ipv4_list,
    decode_max_message_size,
    decode_message,
    decode_parameter_request_list,
    decode_relay_agent_information,
    decode_string,
    decode_u32,
    decode_user_class,
    decode_vendor_class,
    encode_client_architectures,
    encode_client_machine_id,
    encode_ipv4_list,
    encode_message,
    encode_relay_agent_information,
    encode_u32,
    encode_user_class,
    is_ipxe_request,
    reply_size_limit,
)
from metalbus_rack_dhcp.messages import BOOTREPLY, BOOTREQUEST, ClientArchitecture, DhcpMessage, MessageType, Option
from tests.unit.rack_dhcp.wire_fixtures import (
    DHCLIENT_DISCOVER,
    IPXE_DISCOVER,
    IPXE_REQUEST,
    MAC,
    OVERLOADED_OFFER,
    RELAYED_DISCOVER,
    SLIRP_OFFER,
    UDHCPC_DISCOVER,
)

IPXE_UUID = UUID("4c4c4544-0042-3510-8052-b7c04f4e3332")  # what QEMU was given with -uuid


def codes(message: DhcpMessage) -> list[int]:
    return [code for code, _ in message.options]


def test_dhclient_discover_decodes_to_its_header_and_options() -> None:
    message = decode_message(DHCLIENT_DISCOVER)
    assert (message.op, message.xid, message.mac, message.secs) == (BOOTREQUEST, 0x24768550, MAC, 0)
    assert message.chaddr == MAC + bytes(10)
    assert message.message_type is MessageType.DISCOVER
    assert not message.broadcast
    assert message.ciaddr == message.giaddr == IPv4Address("0.0.0.0")
    assert codes(message) == [Option.MESSAGE_TYPE, Option.HOSTNAME, Option.PARAMETER_REQUEST_LIST]
    assert decode_string(message.option(Option.HOSTNAME) or b"") == "node1"
    prl = decode_parameter_request_list(message.option(Option.PARAMETER_REQUEST_LIST) or b"")
    assert prl == (1, 28, 2, 3, 15, 6, 119, 12, 44, 47, 26, 121, 42)
    assert not is_ipxe_request(message)


def test_udhcpc_discover_carries_vendor_class_client_id_and_max_size() -> None:
    message = decode_message(UDHCPC_DISCOVER)
    assert message.message_type is MessageType.DISCOVER
    assert decode_vendor_class(message.option(Option.VENDOR_CLASS) or b"") == "udhcp 1.35.0"
    assert decode_client_identifier(message.option(Option.CLIENT_ID) or b"") == ClientIdentifier(kind=1, value=MAC)
    assert decode_max_message_size(message.option(Option.MAX_MESSAGE_SIZE) or b"") == 576
    assert reply_size_limit(message) == 576


def test_ipxe_discover_identifies_pxe_architecture_machine_id_and_ipxe() -> None:
    message = decode_message(IPXE_DISCOVER)
    assert message.message_type is MessageType.DISCOVER
    assert decode_vendor_class(message.option(Option.VENDOR_CLASS) or b"") == "PXEClient:Arch:00000:UNDI:002001"
    assert decode_client_architectures(message.option(Option.CLIENT_ARCHITECTURE) or b"") == (
        ClientArchitecture.X86_BIOS,
    )
    assert message.option(Option.CLIENT_NDI) == bytes((1, 2, 1))  # UNDI 2.1
    assert decode_client_machine_id(message.option(Option.CLIENT_MACHINE_ID) or b"") == IPXE_UUID
    assert decode_user_class(message.option(Option.USER_CLASS) or b"") == (b"iPXE",)
    assert is_ipxe_request(message)
    assert reply_size_limit(message) == 1472
    assert message.option(175) is not None and len(message.option(175) or b"") == 48  # unknown options pass through
    assert codes(message) == [53, 57, 93, 94, 60, 77, 55, 175, 61, 97]


def test_ipxe_request_names_the_server_and_the_offered_address() -> None:
    message = decode_message(IPXE_REQUEST)
    assert message.message_type is MessageType.REQUEST
    assert decode_ipv4(message.option(Option.SERVER_ID) or b"") == IPv4Address("10.0.2.2")
    assert decode_ipv4(message.option(Option.REQUESTED_IP) or b"") == IPv4Address("10.0.2.15")


def test_relayed_discover_keeps_giaddr_hops_and_relay_agent_information() -> None:
    message = decode_message(RELAYED_DISCOVER)
    assert (message.hops, message.giaddr) == (1, IPv4Address("10.20.0.1"))
    raw = message.option(Option.RELAY_AGENT_INFO)
    assert raw == bytes.fromhex("01096d6272323734383962")
    information = decode_relay_agent_information(raw)
    assert (information.circuit_id, information.remote_id) == (b"mbr27489b", None)
    assert encode_relay_agent_information(information) == raw  # echoed unchanged in the reply


def test_server_offer_decodes_to_its_reply_fields() -> None:
    message = decode_message(SLIRP_OFFER)
    assert (message.op, message.message_type) == (BOOTREPLY, MessageType.OFFER)
    assert (message.yiaddr, message.siaddr) == (IPv4Address("10.0.2.15"), IPv4Address("10.0.2.2"))
    assert decode_ipv4(message.option(Option.SUBNET_MASK) or b"") == IPv4Address("255.255.255.0")
    assert decode_u32(message.option(Option.LEASE_TIME) or b"") == 86400


@pytest.mark.parametrize(
    "packet", [DHCLIENT_DISCOVER, UDHCPC_DISCOVER, IPXE_DISCOVER, IPXE_REQUEST, RELAYED_DISCOVER], ids=repr
)
def test_captured_packets_reencode_to_the_same_bytes(packet: bytes) -> None:
    assert encode_message(decode_message(packet), max_size=1500) == packet


def test_zero_padding_beyond_the_bootp_minimum_is_not_reproduced() -> None:
    encoded = encode_message(decode_message(SLIRP_OFFER))
    assert len(encoded) == 300
    assert encoded + bytes(len(SLIRP_OFFER) - 300) == SLIRP_OFFER


def test_overloaded_options_are_merged_from_options_then_file_then_sname() -> None:
    message = decode_message(OVERLOADED_OFFER)
    assert message.options == (
        (Option.MESSAGE_TYPE, b"\x02"),
        (Option.SERVER_ID, bytes.fromhex("0a000202")),
        (43, bytes.fromhex("010203040506")),  # split between options and file, concatenated (RFC 3396)
        (Option.SUBNET_MASK, bytes.fromhex("ffffff00")),
        (Option.LEASE_TIME, bytes.fromhex("00015180")),
        (Option.TFTP_SERVER_NAME, b"10.0.2.2"),
    )
    assert (message.sname, message.file, message.broadcast) == (b"", b"", True)
    assert decode_message(encode_message(message)) == message


def test_repeated_option_in_the_options_field_is_one_concatenated_option() -> None:
    packet = bytearray(DHCLIENT_DISCOVER)
    end = packet.index(0xFF, 240)
    packet[end : end + 8] = bytes.fromhex("0c 03 2d7261 ff") + bytes(2)  # a second 12: "node1" + "-ra"
    message = decode_message(bytes(packet))
    assert decode_string(message.option(Option.HOSTNAME) or b"") == "node1-ra"
    assert codes(message) == [Option.MESSAGE_TYPE, Option.HOSTNAME, Option.PARAMETER_REQUEST_LIST]


def offer(*options: tuple[int, bytes], sname: bytes = b"", file: bytes = b"") -> DhcpMessage:
    return DhcpMessage(
        op=BOOTREPLY,
        xid=0x86FF927C,
        chaddr=MAC + bytes(10),  # the whole 16-byte field, as decoded
        yiaddr=IPv4Address("10.0.2.15"),
        sname=sname,
        file=file,
        options=((Option.MESSAGE_TYPE, b"\x02"), (Option.SERVER_ID, bytes(4)), *options),
    )


def option(code: int, payload: bytes) -> bytes:
    return bytes((code, len(payload))) + payload


BIG = (43, b"v" * 250)  # 252 bytes on the wire
TFTP, BOOTFILE, HOSTNAME = (66, b"t" * 60), (67, b"b" * 40), (12, b"h" * 40)  # 62, 42 and 42 bytes


def test_options_that_do_not_fit_576_bytes_spill_into_file_then_sname() -> None:
    encoded = encode_message(offer(BIG, TFTP, BOOTFILE, HOSTNAME))
    assert encoded[44:108] == (option(*HOSTNAME) + b"\xff").ljust(64, b"\x00")  # sname
    assert encoded[108:236] == (option(*TFTP) + option(*BOOTFILE) + b"\xff").ljust(128, b"\x00")  # file
    assert encoded[236:] == (bytes.fromhex("63825363 350102 360400000000") + option(*BIG) + bytes.fromhex("340103 ff"))
    assert len(encoded) <= 576 - 28  # option 57 counts the IP and UDP headers
    assert decode_message(encoded) == offer(BIG, TFTP, BOOTFILE, HOSTNAME)


def test_overload_uses_only_the_free_field() -> None:
    message = offer(BIG, TFTP, file=b"pxelinux.0")
    encoded = encode_message(message)
    assert encoded[-4:] == bytes.fromhex("340102ff")  # option 52 = sname only
    assert encoded[108:118] == b"pxelinux.0"
    assert decode_message(encoded) == message


def test_options_that_fit_nowhere_are_refused_with_the_reason() -> None:
    with pytest.raises(DhcpEncodeError, match="do not fit"):
        encode_message(offer(BIG, TFTP, sname=b"tftp.example", file=b"pxelinux.0"))


def test_client_max_message_size_lets_options_stay_in_the_options_field() -> None:
    encoded = encode_message(offer(BIG, TFTP, BOOTFILE, HOSTNAME), max_size=1472)
    assert encoded[44:236] == bytes(192)
    assert (
        encoded[240:]
        == bytes.fromhex("350102 360400000000")
        + b"".join(option(*pair) for pair in (BIG, TFTP, BOOTFILE, HOSTNAME))
        + b"\xff"
    )
    assert decode_message(encoded) == offer(BIG, TFTP, BOOTFILE, HOSTNAME)


def test_options_longer_than_255_bytes_are_split_and_merged_back() -> None:
    message = offer((43, bytes(range(256)) * 2 + b"end"))
    encoded = encode_message(message, max_size=1500)
    assert encoded[249:251] == bytes((43, 255)) and encoded[506:508] == bytes((43, 255))
    assert encoded[763:765] == bytes((43, 5))
    assert decode_message(encoded) == message


def test_short_messages_are_padded_to_the_bootp_minimum_after_the_end_option() -> None:
    encoded = encode_message(offer())
    assert len(encoded) == 300
    assert encoded[240:250] == bytes.fromhex("350102 360400000000 ff")
    assert encoded[250:] == bytes(50)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"chaddr": bytes(17)}, "chaddr"),
        ({"sname": b"s" * 65}, "sname"),
        ({"file": b"f" * 129}, "file"),
        ({"xid": 1 << 32}, "out of range"),
        ({"options": ((0, b""),)}, "option code 0"),
        ({"options": ((255, b""),)}, "option code 255"),
        ({"options": ((52, b"\x01"),)}, "option code 52"),
    ],
)
def test_encoding_refuses_what_the_wire_cannot_carry(change: dict[str, object], problem: str) -> None:
    with pytest.raises(DhcpEncodeError, match=problem):
        encode_message(replace(offer(), **change))  # type: ignore[arg-type]


def test_encoding_refuses_a_max_size_below_576() -> None:
    with pytest.raises(DhcpEncodeError, match="max_size"):
        encode_message(offer(), max_size=575)


def with_bytes(packet: bytes, offset: int, data: bytes) -> bytes:
    return packet[:offset] + data + packet[offset + len(data) :]


HEADER = UDHCPC_DISCOVER[:240]  # header and magic cookie of a valid DISCOVER


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (UDHCPC_DISCOVER[:239], "truncated header"),
        (with_bytes(UDHCPC_DISCOVER, 236, b"\x63\x82\x53\x00"), "bad magic cookie"),
        (with_bytes(UDHCPC_DISCOVER, 0, b"\x03"), "bad op"),
        (with_bytes(UDHCPC_DISCOVER, 1, b"\x06"), "not ethernet"),
        (with_bytes(UDHCPC_DISCOVER, 2, b"\x10"), "not ethernet"),
        (HEADER + bytes.fromhex("350101 0c056e6f"), "option overruns packet"),
        (HEADER + bytes.fromhex("350101 0c"), "option overruns packet"),
        (with_bytes(HEADER, 108, b"\x0c\xff") + bytes.fromhex("350101 340101 ff"), "option overruns packet"),
        (HEADER + bytes.fromhex("350101"), "no end option"),
        (HEADER + bytes.fromhex("350101 340104 ff"), "bad option overload"),
        (HEADER + bytes.fromhex("350101 34020101 ff"), "bad option overload"),
        (HEADER + bytes.fromhex("0c0101 ff"), "no message type"),
        (HEADER + bytes.fromhex("35020101 ff"), "bad message type"),
    ],
)
def test_malformed_packets_raise_one_error_type_with_a_counter_label(packet: bytes, reason: str) -> None:
    with pytest.raises(DhcpDecodeError) as raised:
        decode_message(packet)
    assert raised.value.reason == reason
    assert reason in DECODE_REASONS


@pytest.mark.parametrize(
    ("decode", "payload", "reason"),
    [
        (decode_ipv4, b"\x0a\x00\x02", "bad option length"),
        (decode_ipv4_list, b"", "bad option length"),
        (decode_ipv4_list, bytes(6), "bad option length"),
        (decode_u32, bytes(2), "bad option length"),
        (decode_max_message_size, bytes(4), "bad option length"),
        (decode_string, b"\xff\xfe", "bad string"),
        (decode_client_identifier, b"\x01", "bad client identifier"),
        (decode_user_class, b"", "bad user class"),
        (decode_client_architectures, b"\x00\x07\x00", "bad option length"),
        (decode_client_machine_id, b"\x01" + bytes(16), "bad client machine id"),
        (decode_client_machine_id, bytes(16), "bad client machine id"),
        (decode_relay_agent_information, b"\x01\x05ab", "bad relay agent information"),
        (decode_relay_agent_information, b"", "bad relay agent information"),
    ],
)
def test_malformed_option_payloads_raise_decode_errors(
    decode: Callable[[bytes], object], payload: bytes, reason: str
) -> None:
    with pytest.raises(DhcpDecodeError) as raised:
        decode(payload)
    assert raised.value.reason == reason
    assert reason in DECODE_REASONS


def test_typed_option_payloads_round_trip() -> None:
    addresses = (IPv4Address("10.0.2.2"), IPv4Address("10.0.2.3"))
    assert decode_ipv4_list(encode_ipv4_list(addresses)) == addresses
    assert decode_u32(encode_u32(86400)) == 86400
    assert decode_client_architectures(encode_client_architectures([7, 9])) == (7, 9)
    assert decode_client_machine_id(encode_client_machine_id(IPXE_UUID)) == IPXE_UUID
    relay = RelayAgentInformation(suboptions=((1, b"eth0:12"), (2, b"\x00\x11\x22\x33\x44\x55")))
    decoded_relay = decode_relay_agent_information(encode_relay_agent_information(relay))
    assert decoded_relay == relay and decoded_relay.remote_id == b"\x00\x11\x22\x33\x44\x55"
    assert decode_string(b"node1\x00") == "node1"  # trailing NUL some clients add


def test_user_class_accepts_rfc3004_and_the_plain_ipxe_string() -> None:
    assert decode_user_class(b"iPXE") == (b"iPXE",)
    assert decode_user_class(encode_user_class([b"iPXE", b"rack-7"])) == (b"iPXE", b"rack-7")
    assert encode_user_class([b"iPXE"]) == b"\x04iPXE"
    assert decode_user_class(b"\x02ab\x00") == (b"\x02ab\x00",)  # not RFC 3004 → one plain class
    rfc3004_ipxe = replace(offer(), options=((Option.MESSAGE_TYPE, b"\x01"), (Option.USER_CLASS, b"\x04iPXE")))
    assert is_ipxe_request(rfc3004_ipxe)
    with pytest.raises(DhcpEncodeError):
        encode_user_class([b""])


def test_reply_size_limit_never_goes_below_576() -> None:
    asks_less = replace(offer(), options=((Option.MESSAGE_TYPE, b"\x01"), (Option.MAX_MESSAGE_SIZE, b"\x01\x2c")))
    assert reply_size_limit(asks_less) == 576
    assert reply_size_limit(offer()) == 576
