"""The resolver's remembered replies change nothing observable: each reply carries its query's id, rotation goes on
across remembered replies, a new zone is answered at once, and counters count remembered replies too."""

import socket
from ipaddress import IPv4Address, IPv4Network

import dns.message
import dns.rcode

from metalbus.contracts.dns import DnsZone, HostRecord, SubnetName
from metalbus_rack_proxy.dns_answers import Answerer, zone_view
from metalbus_rack_proxy.dns_forwarder import Forwarder, Upstream
from metalbus_rack_proxy.dns_server import DnsResolver

SUBNET = "10-20-0-0-24.maas-internal"


def zone(host_address: str = "10.20.0.57") -> DnsZone:
    return DnsZone(
        domain="maas-internal",
        serial=1,
        subnets=[
            SubnetName(
                name=SUBNET,
                cidr=IPv4Network("10.20.0.0/24"),
                rack_addresses=[IPv4Address("10.20.0.2"), IPv4Address("10.20.0.3"), IPv4Address("10.20.0.4")],
            )
        ],
        hosts=[HostRecord(hostname="node-7", address=IPv4Address(host_address))],
    )


def resolver() -> DnsResolver:
    answerer = Answerer("maas-internal")
    answerer.use_zone(zone_view(zone()))
    return DnsResolver(answerer, Forwarder(()))


def ask(dns_resolver: DnsResolver, name: str, query_id: int) -> tuple[int, list[str]]:
    query = dns.message.make_query(name, "A", id=query_id)
    raw = dns_resolver.answer_locally(query.to_wire(), 512)
    assert isinstance(raw, bytes)
    reply = dns.message.from_wire(raw)
    return reply.id, [rdata.address for rrset in reply.answer for rdata in rrset]


def test_repeated_queries_rotate_and_each_reply_carries_its_own_id() -> None:
    dns_resolver = resolver()
    replies = [ask(dns_resolver, SUBNET, query_id) for query_id in (11, 12, 13, 14, 15)]
    assert [query_id for query_id, _ in replies] == [11, 12, 13, 14, 15]
    assert [addresses[0] for _, addresses in replies] == [
        "10.20.0.2",
        "10.20.0.3",
        "10.20.0.4",
        "10.20.0.2",
        "10.20.0.3",
    ]
    assert all(sorted(addresses) == ["10.20.0.2", "10.20.0.3", "10.20.0.4"] for _, addresses in replies)


def test_a_new_zone_is_answered_from_the_next_query_on() -> None:
    dns_resolver = resolver()
    assert ask(dns_resolver, "node-7.maas-internal", 1) == (1, ["10.20.0.57"])
    assert ask(dns_resolver, "node-7.maas-internal", 2) == (2, ["10.20.0.57"])
    dns_resolver.answerer.use_zone(zone_view(zone("10.20.0.58")))
    assert ask(dns_resolver, "node-7.maas-internal", 3) == (3, ["10.20.0.58"])


def test_remembered_replies_are_counted_like_any_other() -> None:
    dns_resolver = resolver()
    for query_id in range(3):
        ask(dns_resolver, "node-7.maas-internal", query_id)
        ask(dns_resolver, "nobody.maas-internal", query_id)
    assert dns_resolver.counters.queries_by_type[1] == 6
    assert dict(dns_resolver.counters.replies_by_rcode) == {"NOERROR": 3, "NXDOMAIN": 3}


def test_upstreams_are_read_with_and_without_a_port() -> None:
    assert Upstream.parse("192.0.2.53") == Upstream("192.0.2.53", 53)
    assert Upstream.parse("127.0.0.1:5353") == Upstream("127.0.0.1", 5353)


async def test_a_name_no_upstream_answers_is_servfail_and_counted() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    answerer = Answerer("maas-internal")
    dns_resolver = DnsResolver(answerer, Forwarder([Upstream("127.0.0.1", port)], timeout_s=0.5))
    raw = await dns_resolver.resolve(dns.message.make_query("www.example.test", "A", id=9).to_wire(), 512)
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert (reply.id, reply.rcode()) == (9, dns.rcode.SERVFAIL)
    assert (dns_resolver.counters.forwarded, dns_resolver.counters.forward_failures) == (1, 1)
