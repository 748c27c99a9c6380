"""scapy (scapy.layers.dhcp) as an independent oracle for the codec.

Packets scapy builds decode with ours to the fields and typed option values scapy was given; packets we encode
parse in scapy to the same fields and options; captured and overloaded packets read the same in both, area by area.
"""

import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP, DHCPRevOptions

from metalbus_rack_dhcp.codec import (
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
    encode_client_identifier,
    encode_client_machine_id,
    encode_ipv4,
    encode_ipv4_list,
    encode_max_message_size,
    encode_message,
    encode_parameter_request_list,
    encode_relay_agent_information,
    encode_string,
    encode_u32,
    encode_user_class,
)
from metalbus_rack_dhcp.messages import DhcpMessage, MessageType
from tests.unit.rack_dhcp.wire_fixtures import ALL_FIXTURES

ORACLE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class OptionKind:
    """One option as scapy spells it (name, values) and as our typed helpers read and write it."""

    code: int
    scapy_name: str
    values: st.SearchStrategy[Any]
    scapy_values: Callable[[Any], tuple[Any, ...]]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


ipv4s = st.integers(0, 2**32 - 1).map(IPv4Address)
address_lists = st.lists(ipv4s, min_size=1, max_size=4).map(tuple)
u32s = st.integers(0, 2**32 - 1)
names = st.text(alphabet=string.ascii_letters + string.digits + "-._/", min_size=1, max_size=40)
vendor_classes = st.sampled_from(
    ["PXEClient:Arch:00000:UNDI:002001", "PXEClient:Arch:00007:UNDI:003016", "HTTPClient:Arch:00016", "udhcp 1.35.0"]
)
relay_information = st.lists(
    st.tuples(st.sampled_from([1, 2, 5, 9]), st.binary(min_size=1, max_size=16)), min_size=1, max_size=3
).map(lambda suboptions: RelayAgentInformation(suboptions=tuple(suboptions)))


def dotted(addresses: tuple[IPv4Address, ...]) -> tuple[str, ...]:
    return tuple(str(address) for address in addresses)


def text(value: str) -> tuple[bytes]:
    return (value.encode(),)


def address(kind_code: int, name: str) -> OptionKind:
    return OptionKind(kind_code, name, ipv4s, lambda value: (str(value),), encode_ipv4, decode_ipv4)


def seconds(kind_code: int, name: str) -> OptionKind:
    return OptionKind(kind_code, name, u32s, lambda value: (value,), encode_u32, decode_u32)


KINDS = [
    address(1, "subnet_mask"),
    OptionKind(3, "router", address_lists, dotted, encode_ipv4_list, decode_ipv4_list),
    OptionKind(6, "name_server", address_lists, dotted, encode_ipv4_list, decode_ipv4_list),
    OptionKind(12, "hostname", names, text, encode_string, decode_string),
    address(50, "requested_addr"),
    seconds(51, "lease_time"),
    address(54, "server_id"),
    OptionKind(
        55,
        "param_req_list",
        st.lists(st.integers(1, 254), min_size=1, max_size=30).map(tuple),
        lambda codes: (list(codes),),
        encode_parameter_request_list,
        decode_parameter_request_list,
    ),
    OptionKind(
        57,
        "max_dhcp_size",
        st.integers(576, 65535),
        lambda size: (size,),
        encode_max_message_size,
        decode_max_message_size,
    ),
    seconds(58, "renewal_time"),
    seconds(59, "rebinding_time"),
    OptionKind(60, "vendor_class_id", vendor_classes | names, text, encode_string, decode_vendor_class),
    OptionKind(
        61,
        "client_id",
        st.builds(ClientIdentifier, kind=st.integers(0, 255), value=st.binary(min_size=1, max_size=20)),
        lambda identifier: (bytes((identifier.kind,)) + identifier.value,),
        encode_client_identifier,
        decode_client_identifier,
    ),
    OptionKind(66, "tftp_server_name", names, text, encode_string, decode_string),
    OptionKind(67, "boot-file-name", names, text, encode_string, decode_string),
    OptionKind(
        77,
        "user_class",
        st.lists(st.binary(min_size=1, max_size=12), min_size=1, max_size=3).map(tuple),
        lambda classes: (b"".join(bytes((len(name),)) + name for name in classes),),
        encode_user_class,
        decode_user_class,
    ),
    OptionKind(
        82,
        "relay_agent_information",
        relay_information,
        lambda info: (b"".join(bytes((code, len(payload))) + payload for code, payload in info.suboptions),),
        encode_relay_agent_information,
        decode_relay_agent_information,
    ),
    OptionKind(
        93,
        "pxe_client_architecture",
        st.lists(st.integers(0, 65535), min_size=1, max_size=3).map(tuple),
        lambda architectures: (b"".join(struct.pack("!H", number) for number in architectures),),
        encode_client_architectures,
        decode_client_architectures,
    ),
    OptionKind(
        97,
        "pxe_client_machine_identifier",
        st.uuids(),
        lambda uuid: (b"\x00" + uuid.bytes_le,),
        encode_client_machine_id,
        decode_client_machine_id,
    ),
]
RAW_CODES = st.integers(224, 254)  # site-specific options scapy does not name: it keeps them as (code, bytes)


@dataclass(frozen=True)
class Spec:
    """A message described independently of both codecs."""

    header: dict[str, Any]
    message_type: MessageType
    entries: list[tuple[OptionKind, Any] | tuple[int, bytes]]


@st.composite
def specs(draw: st.DrawFn, *, raw_size: int = 40, unique_raw: bool = False, max_kinds: int = 8) -> Spec:
    header = {
        "op": draw(st.sampled_from([1, 2])),
        "xid": draw(u32s),
        "secs": draw(st.integers(0, 65535)),
        "flags": draw(st.sampled_from([0, 0x8000])),
        "hops": draw(st.integers(0, 16)),
        **{field: draw(ipv4s) for field in ("ciaddr", "yiaddr", "siaddr", "giaddr")},
        "mac": draw(st.binary(min_size=6, max_size=6)),
        "sname": draw(st.sampled_from([b"", b"tftp.rack-7"])),
        "file": draw(st.sampled_from([b"", b"ipxe.efi", b"pxelinux.0"])),
    }
    kinds = draw(st.lists(st.sampled_from(KINDS), unique_by=lambda kind: kind.code, max_size=max_kinds))
    typed: list[tuple[OptionKind, Any] | tuple[int, bytes]] = [(kind, draw(kind.values)) for kind in kinds]
    raw = draw(
        st.lists(
            st.tuples(RAW_CODES, st.binary(max_size=raw_size)),
            max_size=3,
            unique_by=(lambda e: e[0]) if unique_raw else None,
        )
    )
    entries = draw(st.permutations([*typed, *raw]))
    return Spec(header=header, message_type=draw(st.sampled_from(MessageType)), entries=entries)


def scapy_packet(spec: Spec, htype: int = 1) -> bytes:
    fields: dict[str, Any] = {key: value for key, value in spec.header.items() if key != "mac"}
    fields.update({name: str(fields[name]) for name in ("ciaddr", "yiaddr", "siaddr", "giaddr")})
    options: list[Any] = [("message-type", int(spec.message_type))]
    for kind, value in spec.entries:
        options.append((kind.scapy_name, *kind.scapy_values(value)) if isinstance(kind, OptionKind) else (kind, value))
    return bytes(BOOTP(htype=htype, chaddr=spec.header["mac"], **fields) / DHCP(options=[*options, "end"]))


def option_codes_in_order(spec: Spec) -> list[int]:
    codes = [53] + [entry[0].code if isinstance(entry[0], OptionKind) else entry[0] for entry in spec.entries]
    return list(dict.fromkeys(codes))


@ORACLE
@given(specs(), st.sampled_from([1, 1, 1, 6]))
def test_packets_built_by_scapy_decode_to_the_same_fields_and_options(spec: Spec, htype: int) -> None:
    packet = scapy_packet(spec, htype)
    if htype != 1:
        with pytest.raises(DhcpDecodeError, match="not ethernet"):
            decode_message(packet)
        return
    message = decode_message(packet)
    for field, value in spec.header.items():
        assert getattr(message, field) == value, field
    assert message.chaddr == spec.header["mac"] + bytes(10)
    assert message.message_type is spec.message_type
    assert [code for code, _ in message.options] == option_codes_in_order(spec)
    for kind, value in spec.entries:
        if isinstance(kind, OptionKind):
            assert kind.decode(message.option(kind.code) or b"") == value, kind.scapy_name
        else:  # raw codes may repeat: RFC 3396 concatenation
            assert message.option(kind) == b"".join(v for c, v in spec.entries if c == kind)


def our_message(spec: Spec) -> DhcpMessage:
    options = [(53, bytes((spec.message_type,)))]
    for kind, value in spec.entries:
        options.append((kind.code, kind.encode(value)) if isinstance(kind, OptionKind) else (kind, value))
    header = {key: value for key, value in spec.header.items() if key != "mac"}
    return DhcpMessage(chaddr=spec.header["mac"] + bytes(10), options=tuple(options), **header)


@ORACLE
@given(specs(raw_size=600, unique_raw=True))
def test_packets_we_encode_parse_in_scapy_to_the_same_fields_and_options(spec: Spec) -> None:
    encoded = encode_message(our_message(spec), max_size=8192)
    bootp = BOOTP(encoded)
    assert len(encoded) >= 300
    for field in ("op", "xid", "secs", "hops"):
        assert getattr(bootp, field) == spec.header[field], field
    assert (bootp.htype, bootp.hlen, int(bootp.flags)) == (1, 6, spec.header["flags"])
    for field in ("ciaddr", "yiaddr", "siaddr", "giaddr"):
        assert IPv4Address(getattr(bootp, field)) == spec.header[field], field
    assert bootp.chaddr == spec.header["mac"] + bytes(10)
    assert (bootp.sname.rstrip(b"\x00"), bootp.file.rstrip(b"\x00")) == (spec.header["sname"], spec.header["file"])
    entries = [entry for entry in bootp[DHCP].options if entry != "pad"]
    assert entries[-1] == "end" and "end" not in entries[:-1]
    scapy_codes = [DHCPRevOptions[e[0]][0] if isinstance(e[0], str) else e[0] for e in entries[:-1]]
    assert list(dict.fromkeys(scapy_codes)) == option_codes_in_order(spec)
    assert entries[0] == ("message-type", int(spec.message_type))
    for kind, value in spec.entries:
        if isinstance(kind, OptionKind):
            assert (kind.scapy_name, *kind.scapy_values(value)) in entries, kind.scapy_name
        else:  # long values arrive as several 255-byte pieces (RFC 3396)
            assert b"".join(e[1] for e in entries if isinstance(e, tuple) and e[0] == kind) == value


def scapy_options(packet: bytes) -> list[tuple[int, bytes]]:
    """Options as scapy reads them: areas in RFC 2131 order (options, file, sname), pieces joined (RFC 3396)."""
    bootp = BOOTP(packet)
    areas = [bootp[DHCP].options]
    overload = next((e[1] for e in areas[0] if isinstance(e, tuple) and e[0] == "dhcp-option-overload"), 0)
    if overload & 1:
        areas.append(DHCP(bootp.file).options)
    if overload & 2:
        areas.append(DHCP(bootp.sname).options)
    merged: dict[int, bytes] = {}
    for area in areas:
        for entry in area[: area.index("end")] if "end" in area else area:
            if entry == "pad":
                continue
            assert isinstance(entry, tuple), f"scapy could not parse {entry!r}"
            wire = bytes(DHCP(options=[entry]))  # scapy's own bytes for its parsed entry
            if wire[0] != DHCPRevOptions["dhcp-option-overload"][0]:
                merged[wire[0]] = merged.get(wire[0], b"") + wire[2:]
    return list(merged.items())


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_captured_and_hand_written_packets_read_the_same_in_scapy(name: str) -> None:
    packet = ALL_FIXTURES[name]
    message, bootp = decode_message(packet), BOOTP(packet)
    assert list(message.options) == scapy_options(packet)
    assert (message.op, message.xid, message.secs, message.flags, message.hops) == (
        bootp.op,
        bootp.xid,
        bootp.secs,
        int(bootp.flags),
        bootp.hops,
    )
    assert [str(getattr(message, f)) for f in ("ciaddr", "yiaddr", "siaddr", "giaddr")] == [
        getattr(bootp, f) for f in ("ciaddr", "yiaddr", "siaddr", "giaddr")
    ]
    assert message.chaddr == bootp.chaddr


FILLERS = st.integers(8, 14).flatmap(
    lambda count: st.lists(
        st.tuples(RAW_CODES, st.binary(min_size=300 // count, max_size=460 // count)), min_size=count, max_size=count
    )
)  # 312 to 488 bytes, more than the 308 of the options field: something must go to file or sname


@settings(max_examples=150, deadline=None)
@given(specs(raw_size=30, max_kinds=3), FILLERS)
def test_overloaded_encodings_read_the_same_in_scapy(spec: Spec, filler: list[tuple[int, bytes]]) -> None:
    message = our_message(spec)
    message = replace(message, options=(*message.options, *filler))
    try:
        encoded = encode_message(message)
    except DhcpEncodeError:
        assume(False)  # more than fits even in file and sname: refusal is tested in test_codec.py
    bootp = BOOTP(encoded)
    assert len(encoded) <= 576 - 28
    overload = next(e[1] for e in bootp[DHCP].options if isinstance(e, tuple) and e[0] == "dhcp-option-overload")
    assert overload in (1, 2, 3)
    event(f"option overload {overload}")
    assert list(decode_message(encoded).options) == scapy_options(encoded)
