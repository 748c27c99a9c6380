"""What the DNS answers from a zone: subnet names to every rack (rotated per query), hostnames and their PTR, the
apex's SOA and NS, NXDOMAIN inside the domain, forwarding outside it, and the subnet name rule of the region."""

from ipaddress import IPv4Address, IPv4Network

import dns.message

from metalbus.contracts.dns import DnsZone, HostRecord, SubnetName
from metalbus_rack_proxy.dns_answers import FORWARD, Answerer, LocalAnswer, rotated, zone_view
from metalbus_rack_proxy.dns_codec import Rcode, RecordType, parse_query
from metalbus_region.dns_zones import subnet_name

SUBNET = "10-20-0-0-24.maas-internal"
RACKS = [IPv4Address("10.20.0.2"), IPv4Address("10.20.0.3"), IPv4Address("10.20.0.4")]


def zone(racks: list[IPv4Address] = RACKS, serial: int = 7) -> DnsZone:
    return DnsZone(
        domain="maas-internal",
        serial=serial,
        subnets=[SubnetName(name=SUBNET, cidr=IPv4Network("10.20.0.0/24"), rack_addresses=racks)],
        hosts=[HostRecord(hostname="node-7", address=IPv4Address("10.20.0.57"))],
    )


def answerer(racks: list[IPv4Address] = RACKS) -> Answerer:
    loaded = Answerer("maas-internal")
    loaded.use_zone(zone_view(zone(racks)))
    return loaded


def ask(answering: Answerer, name: str, rdtype: str = "A") -> LocalAnswer:
    answer = answering.answer(parse_query(dns.message.make_query(name, rdtype).to_wire()))
    assert isinstance(answer, LocalAnswer), f"{name} {rdtype} was forwarded"
    return answer


def addresses(answer: LocalAnswer) -> list[str]:
    assert all(record.rtype == RecordType.A for record in answer.answers)
    return [str(IPv4Address(record.rdata)) for record in answer.answers]


def test_subnet_name_is_the_cidr_with_dashes_in_the_domain() -> None:
    assert subnet_name(IPv4Network("10.20.0.0/24"), "maas-internal") == SUBNET
    assert subnet_name(IPv4Network("192.168.128.0/17"), "lab.example") == "192-168-128-0-17.lab.example"


def test_rotation_starts_one_further_each_time_and_wraps() -> None:
    assert [rotated(RACKS, turn) for turn in (0, 1, 3, 4)] == [
        RACKS,
        [RACKS[1], RACKS[2], RACKS[0]],
        RACKS,
        [RACKS[1], RACKS[2], RACKS[0]],
    ]
    assert rotated([], 5) == []


def test_subnet_name_answers_every_rack_rotated_from_one_query_to_the_next() -> None:
    answering = answerer()
    first, second, third, fourth = (addresses(ask(answering, SUBNET)) for _ in range(4))
    assert first == ["10.20.0.2", "10.20.0.3", "10.20.0.4"]
    assert second == ["10.20.0.3", "10.20.0.4", "10.20.0.2"]
    assert third == ["10.20.0.4", "10.20.0.2", "10.20.0.3"]
    assert fourth == first


def test_other_record_types_of_a_subnet_name_neither_answer_nor_rotate() -> None:
    answering = answerer()
    aaaa = ask(answering, SUBNET, "AAAA")
    assert aaaa.rcode == Rcode.NOERROR and not aaaa.answers
    assert [record.rtype for record in aaaa.authority] == [RecordType.SOA]
    assert addresses(ask(answering, SUBNET))[0] == "10.20.0.2"


def test_the_rotation_survives_a_zone_refresh_and_follows_the_new_rack_list() -> None:
    answering = answerer()
    ask(answering, SUBNET)
    answering.use_zone(zone_view(zone(serial=8)))
    assert addresses(ask(answering, SUBNET))[0] == "10.20.0.3"
    answering.use_zone(zone_view(zone(RACKS[:1], serial=9)))
    assert addresses(ask(answering, SUBNET)) == ["10.20.0.2"]


def test_a_subnet_without_healthy_racks_has_no_address_but_exists() -> None:
    answer = ask(answerer([]), SUBNET)
    assert (answer.rcode, answer.answers) == (Rcode.NOERROR, ())


def test_hostname_resolves_to_its_lease_and_the_address_back_to_the_hostname() -> None:
    answering = answerer()
    assert addresses(ask(answering, "NODE-7.maas-internal.")) == ["10.20.0.57"]
    [ptr] = ask(answering, "57.0.20.10.in-addr.arpa.", "PTR").answers
    assert ptr.rtype == RecordType.PTR
    assert ptr.rdata == b"\x06node-7\x0dmaas-internal\x00"


def test_unknown_names_in_the_domain_are_nxdomain_with_the_soa() -> None:
    answer = ask(answerer(), "nobody.maas-internal.")
    assert answer.rcode == Rcode.NXDOMAIN
    assert [(record.name, record.rtype) for record in answer.authority] == [("maas-internal", RecordType.SOA)]


def test_the_apex_has_soa_and_ns_and_the_nameserver_resolves_to_the_racks() -> None:
    answering = answerer()
    [soa] = ask(answering, "maas-internal.", "SOA").answers
    assert soa.rtype == RecordType.SOA
    assert int.from_bytes(soa.rdata[-20:-16], "big") == 7  # the serial, followed by four timers
    [ns] = ask(answering, "maas-internal.", "NS").answers
    assert ns.rdata == b"\x02ns\x0dmaas-internal\x00"
    assert addresses(ask(answering, "ns.maas-internal.")) == ["10.20.0.2", "10.20.0.3", "10.20.0.4"]


def test_names_outside_the_domain_and_unknown_reverse_names_are_forwarded() -> None:
    answering = answerer()
    for name, rdtype in (("a.example.test.", "A"), ("maas-internal.example.", "A"), ("1.0.20.10.in-addr.arpa.", "PTR")):
        assert answering.answer(parse_query(dns.message.make_query(name, rdtype).to_wire())) is FORWARD


def test_before_the_first_zone_the_domain_is_servfail_and_the_rest_still_forwarded() -> None:
    answering = Answerer("maas-internal")
    assert ask(answering, SUBNET).rcode == Rcode.SERVFAIL
    assert answering.answer(parse_query(dns.message.make_query("a.example.test.", "A").to_wire())) is FORWARD
