"""Garbage never escapes as an exception: any bytes give a reply, a forward decision or a counted drop."""

import asyncio
from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from metalbus.contracts.dns import DnsZone, HostRecord, SubnetName
from metalbus_rack_proxy.dns_answers import Answerer, zone_view
from metalbus_rack_proxy.dns_codec import HEADER_SIZE, MalformedMessage, Query, parse_query
from metalbus_rack_proxy.dns_forwarder import Forwarder
from metalbus_rack_proxy.dns_server import DnsResolver

ZONE = DnsZone(
    domain="maas-internal",
    serial=1,
    subnets=[SubnetName(name="10-20-0-0-24.maas-internal", cidr="10.20.0.0/24", rack_addresses=["10.20.0.2"])],
    hosts=[HostRecord(hostname="node-7", address=IPv4Address("10.20.0.57"))],
)
QUERY_HEADER = bytes.fromhex("123401000001000000000000")


def resolver() -> DnsResolver:
    answerer = Answerer("maas-internal")
    answerer.use_zone(zone_view(ZONE))
    return DnsResolver(answerer, Forwarder(()))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_parse_or_raise_the_typed_error(data: bytes) -> None:
    try:
        query = parse_query(data)
    except MalformedMessage as error:
        assert error.reason
    else:
        assert query.question_bytes == data[HEADER_SIZE : HEADER_SIZE + len(query.question_bytes)]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_any_question_after_a_valid_header_is_answered_forwarded_or_dropped(question: bytes) -> None:
    dns = resolver()
    outcome = dns.answer_locally(QUERY_HEADER + question, 512)
    if outcome is None:
        assert dns.counters.dropped_malformed == 1
    elif isinstance(outcome, Query):
        assert dns.answerer.answer(outcome) is not None
    else:
        assert outcome[:2] == QUERY_HEADER[:2] and len(outcome) <= 512


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_through_the_whole_resolver_with_no_upstream_never_raise(data: bytes) -> None:
    reply = asyncio.run(resolver().resolve(data, 512))
    assert reply is None or len(reply) >= HEADER_SIZE
