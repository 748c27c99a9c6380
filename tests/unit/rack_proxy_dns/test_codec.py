"""The DNS codec against queries a real client sent (busybox nslookup) and against dnspython as an independent
reader and writer: questions parsed, replies readable record by record, truncation, and every drop reason."""

from ipaddress import IPv4Address

import dns.message
import dns.rdatatype
import pytest

from metalbus_rack_proxy.dns_codec import (
    MalformedMessage,
    Rcode,
    Record,
    RecordType,
    a_rdata,
    encode_error_for_header,
    encode_reply,
    name_rdata,
    parse_header,
    parse_query,
    soa_rdata,
)

# busybox nslookup -type=a 10-20-0-0-24.maas-internal, captured on the wire
BUSYBOX_A_QUERY = bytes.fromhex(
    "f208010000010000000000000c31302d32302d302d302d32340d6d6161732d696e7465726e616c0000010001"
)
# busybox nslookup 10.20.0.57 (a reverse lookup), captured on the wire
BUSYBOX_PTR_QUERY = bytes.fromhex("3a1f01000001000000000000023537013002323002313007696e2d61646472046172706100000c0001")


def test_a_captured_query_is_read_with_its_id_flags_and_question() -> None:
    query = parse_query(BUSYBOX_A_QUERY)
    assert (query.header.id, query.name, query.qtype, query.qclass) == (0xF208, "10-20-0-0-24.maas-internal", 1, 1)
    assert query.header.flags & 0x0100  # recursion desired
    assert query.question_bytes == BUSYBOX_A_QUERY[12:]


def test_a_captured_reverse_query_names_the_in_addr_arpa_pointer() -> None:
    query = parse_query(BUSYBOX_PTR_QUERY)
    assert (query.name, query.qtype) == ("57.0.20.10.in-addr.arpa", RecordType.PTR)


def test_names_are_compared_lower_case() -> None:
    wire = dns.message.make_query("Node-7.MAAS-Internal.", "A").to_wire()
    assert parse_query(wire).name == "node-7.maas-internal"


def test_a_reply_reads_back_in_dnspython_with_every_record_in_order() -> None:
    query = parse_query(BUSYBOX_A_QUERY)
    name = query.name
    answers = [Record(name, RecordType.A, 5, a_rdata(IPv4Address(f"10.20.0.{n}"))) for n in (3, 4, 2)]
    reply = dns.message.from_wire(encode_reply(query, Rcode.NOERROR, answers))
    assert reply.id == 0xF208 and reply.rcode() == 0
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.AA and reply.flags & dns.flags.RD
    [rrset] = reply.answer
    assert rrset.name.to_text() == f"{name}." and rrset.ttl == 5
    assert [rdata.address for rdata in rrset] == ["10.20.0.3", "10.20.0.4", "10.20.0.2"]


def test_ptr_soa_and_ns_rdata_read_back_in_dnspython() -> None:
    query = parse_query(BUSYBOX_PTR_QUERY)
    soa = soa_rdata("ns.maas-internal", "hostmaster.maas-internal", 42, refresh=60, retry=30, expire=3600, minimum=5)
    reply = dns.message.from_wire(
        encode_reply(
            query,
            Rcode.NOERROR,
            [Record(query.name, RecordType.PTR, 30, name_rdata("node-7.maas-internal"))],
            [
                Record("maas-internal", RecordType.SOA, 5, soa),
                Record("maas-internal", RecordType.NS, 30, name_rdata("ns.maas-internal")),
            ],
        )
    )
    assert [rdata.target.to_text() for rdata in reply.answer[0]] == ["node-7.maas-internal."]
    [soa_set, ns_set] = reply.authority
    [soa_rdata_read] = list(soa_set)
    assert (soa_rdata_read.mname.to_text(), soa_rdata_read.serial, soa_rdata_read.minimum) == (
        "ns.maas-internal.",
        42,
        5,
    )
    assert [rdata.target.to_text() for rdata in ns_set] == ["ns.maas-internal."]


def test_nxdomain_reply_keeps_the_question_and_sets_the_rcode() -> None:
    query = parse_query(dns.message.make_query("nope.maas-internal.", "A").to_wire())
    reply = dns.message.from_wire(encode_reply(query, Rcode.NXDOMAIN))
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.question[0].name.to_text() == "nope.maas-internal."


def test_a_reply_too_big_for_udp_is_truncated_without_records() -> None:
    query = parse_query(BUSYBOX_A_QUERY)
    answers = [Record(query.name, RecordType.A, 5, a_rdata(IPv4Address(f"10.20.0.{n}"))) for n in range(1, 60)]
    udp = dns.message.from_wire(encode_reply(query, Rcode.NOERROR, answers))
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.message.from_wire(encode_reply(query, Rcode.NOERROR, answers, limit=65535))
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 59


def test_formerr_reply_echoes_the_id_and_no_question() -> None:
    header_only = bytes.fromhex("beef01000000000000000000")
    with pytest.raises(MalformedMessage, match="not exactly one question"):
        parse_query(header_only)
    reply = dns.message.from_wire(encode_error_for_header(parse_header(header_only), Rcode.FORMERR))
    assert reply.id == 0xBEEF and reply.rcode() == dns.rcode.FORMERR and not reply.question


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter than a header"),
        (BUSYBOX_A_QUERY[:11], "shorter than a header"),
        (bytes.fromhex("0001810000010000000000000161000001000100"), "a response, not a query"),
        (bytes.fromhex("000101000002000000000000"), "not exactly one question"),
        (BUSYBOX_A_QUERY[:20], "label runs past the end"),
        (BUSYBOX_A_QUERY[:-2], "question runs past the end"),
        (bytes.fromhex("000101000001000000000000") + b"\xc0\x0c", "pointer does not point backwards"),
        (bytes.fromhex("000101000001000000000000") + b"\x40abc", "label type or length not supported"),
        (bytes.fromhex("000101000001000000000000") + b"\x03a.b\x00\x00\x01\x00\x01", "a dot inside a label"),
        (bytes.fromhex("000101000001000000000000") + b"\x3f" + b"a" * 63, "name runs past the end"),
        (bytes.fromhex("000101000001000000000000") + (b"\x3f" + b"a" * 63) * 5 + b"\x00", "longer than 255"),
    ],
)
def test_unreadable_queries_raise_the_one_typed_error_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_query(data)
