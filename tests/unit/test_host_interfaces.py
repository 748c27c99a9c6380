"""A rack reports its IPv4 networks as iproute2 sees them, loopback left out."""

from ipaddress import IPv4Interface
from pathlib import Path

from metalbus.host_interfaces import parse_ip_addr_json

CAPTURED = (Path(__file__).parent / "fixtures" / "ip-j-4-addr.json").read_bytes()


def test_captured_ip_output_gives_every_non_loopback_address_with_its_prefix() -> None:
    assert parse_ip_addr_json(CAPTURED) == [IPv4Interface("192.0.2.2/24")]


def test_several_addresses_on_several_links_and_ipv6_ignored() -> None:
    output = b"""[
      {"ifname": "br0", "flags": ["UP"], "addr_info": [
        {"family": "inet", "local": "10.20.0.2", "prefixlen": 24},
        {"family": "inet6", "local": "fe80::1", "prefixlen": 64},
        {"family": "inet", "local": "10.0.0.2", "prefixlen": 16}]},
      {"ifname": "eth1", "flags": ["UP"], "addr_info": []}
    ]"""
    assert parse_ip_addr_json(output) == [IPv4Interface("10.20.0.2/24"), IPv4Interface("10.0.0.2/16")]


def test_empty_output_means_no_interfaces() -> None:
    assert parse_ip_addr_json(b"") == []
