"""rack-dhcp's unicast replies: the client's MAC is given to the kernel's neighbour table with one SIOCSARP, and
``ip neigh`` (an independent reader of that table) shows it; a device that does not exist is a False, not a crash."""

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from metalbus_rack_dhcp.server import arp_entry_request


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout


@pytest.fixture
def namespace_with_veth() -> Iterator[str]:
    namespace = f"mbnb{secrets.token_hex(3)}"
    try:
        run("ip", "netns", "add", namespace)
        run("ip", "-n", namespace, "link", "add", "rack0", "type", "veth", "peer", "name", "peer0")
        run("ip", "-n", namespace, "addr", "add", "10.66.0.2/24", "dev", "rack0")
        for device in ("rack0", "peer0"):
            run("ip", "-n", namespace, "link", "set", device, "up")
        yield namespace
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run("ip", "netns", "del", namespace)


def test_the_request_is_a_struct_arpreq() -> None:
    request = arp_entry_request("eth0", IPv4Address("10.20.0.101"), bytes.fromhex("525400123456"))
    assert len(request) == 16 + 16 + 4 + 16 + 16
    assert request[4:8] == bytes([10, 20, 0, 101])
    assert request[18:24] == bytes.fromhex("525400123456")
    assert request[-16:] == b"eth0" + bytes(12)


def set_neighbour_in(namespace: str, interface: str, address: str, mac: str) -> bool:
    """rack-dhcp's own set_neighbour, run by a Python inside the namespace (as the rack runs on its host)."""
    code = (
        "import asyncio, ipaddress, sys; from metalbus_rack_dhcp.server import set_neighbour; "
        f"print(asyncio.run(set_neighbour({interface!r}, ipaddress.IPv4Address({address!r}), bytes.fromhex({mac!r}))))"
    )
    return run("ip", "netns", "exec", namespace, sys.executable, "-c", code).strip() == "True"


def test_the_clients_mac_lands_in_the_neighbour_table(namespace_with_veth: str) -> None:
    added = set_neighbour_in(namespace_with_veth, "rack0", "10.66.0.50", "525400abcdef")
    missing = set_neighbour_in(namespace_with_veth, "no-such0", "10.66.0.51", "525400abcdee")

    assert (added, missing) == (True, False)
    table = run("ip", "-n", namespace_with_veth, "neigh", "show", "dev", "rack0")
    assert "10.66.0.50 lladdr 52:54:00:ab:cd:ef" in table
