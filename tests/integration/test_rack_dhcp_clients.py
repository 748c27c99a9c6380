"""rack-dhcp answers real DHCP clients (busybox udhcpc, ISC dhclient) in a network namespace, leases in the region.

The server runs in-process on the root-namespace end of a veth pair; the client end lives in a namespace made for
the test. Both, and every client process, are removed in teardown.
"""

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.leases import Lease, LeaseListQuery, LeaseState, SubnetCreate
from metalbus.subjects import LEASE_LIST, SUBNET_CREATE
from metalbus_rack_dhcp.__main__ import run_rack_dhcp
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, serve_interface
from metalbus_rack_dhcp.settings import RackDhcpSettings
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

UDHCPC = shutil.which("udhcpc")
DHCLIENT = shutil.which("dhclient")
CLIENT_TIMEOUT_S = 20.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and port 67 need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed"),
]
needs_udhcpc = pytest.mark.skipif(UDHCPC is None, reason="udhcpc is not installed (scripts/setup.sh installs it)")
needs_dhclient = pytest.mark.skipif(
    DHCLIENT is None, reason="dhclient is not installed (isc-dhcp-client; scripts/setup.sh installs it)"
)

# Records every call's environment in <records>/<event>.env and configures the address (renewals are unicast from
# it). The directory is written into the script: dhclient runs its script with an environment of its own.
CLIENT_SCRIPT = """#!/bin/sh
RECORD_DIR='{records}'
event="${1:-$reason}"
env > "$RECORD_DIR/$event.env.tmp" && mv "$RECORD_DIR/$event.env.tmp" "$RECORD_DIR/$event.env"
case "$event" in
  bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
  BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;;
esac
exit 0
"""


@dataclass(frozen=True)
class Link:
    namespace: str
    server_interface: str
    client_interface: str
    prefix: str  # "10.77.<n>"
    client_mac: str
    records: Path

    def ip(self, last_octet: int) -> IPv4Address:
        return IPv4Address(f"{self.prefix}.{last_octet}")

    def record(self, event: str) -> dict[str, str]:
        lines = (self.records / f"{event}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)


async def run(*argv: str, timeout: float = 10.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv} did not finish within {timeout}s") from None
    return process.returncode or 0, output.decode(errors="replace")


def run_sync(*argv: str) -> str:
    import subprocess

    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout


def unused_prefix() -> str:
    """A 10.77.<n> that no route of the root namespace uses (other runs may hold some)."""
    routes = run_sync("ip", "-4", "route", "show")
    free = [n for n in range(1, 255) if f"10.77.{n}." not in routes]
    return f"10.77.{secrets.choice(free)}"


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    suffix = secrets.token_hex(3)
    namespace, server_if, client_if = f"mbn{suffix}", f"mbs{suffix}", f"mbc{suffix}"
    prefix = unused_prefix()
    records = tmp_path / "records"
    records.mkdir()
    try:
        run_sync("ip", "netns", "add", namespace)
        run_sync("ip", "link", "add", server_if, "type", "veth", "peer", "name", client_if, "netns", namespace)
        run_sync("ip", "addr", "add", f"{prefix}.2/24", "dev", server_if)
        run_sync("ip", "link", "set", server_if, "up")
        run_sync("ip", "-n", namespace, "link", "set", "lo", "up")
        run_sync("ip", "-n", namespace, "link", "set", client_if, "up")
        mac = run_sync("ip", "netns", "exec", namespace, "cat", f"/sys/class/net/{client_if}/address").strip()
        yield Link(namespace, server_if, client_if, prefix, mac, records)
    finally:
        for command in (("ip", "link", "del", server_if), ("ip", "netns", "del", namespace)):
            with contextlib.suppress(Exception):
                run_sync(*command)


@pytest.fixture
def client_script(tmp_path: Path, link: Link) -> Path:
    script = tmp_path / "record-env.sh"
    script.write_text(CLIENT_SCRIPT.replace("{records}", str(link.records)))
    script.chmod(0o755)
    return script


@dataclass
class Served:
    bus: Bus
    server: DhcpProtocol
    counters: ServerCounters


async def serve_subnet(bus: Bus, link: Link, lease_time_s: int) -> None:
    """10.77.<n>.0/24: range .100-.120, gateway .1, DNS .2 (the server's own address)."""
    subnet = SubnetCreate(
        cidr=f"{link.prefix}.0/24",
        gateway=link.ip(1),
        dns_servers=[link.ip(2)],
        dynamic_start=link.ip(100),
        dynamic_end=link.ip(120),
        lease_time_s=lease_time_s,
    )
    await eventually(lambda: bus.request(SUBNET_CREATE, subnet, timeout=5), lambda created: True, timeout=20)


async def serve(bus: Bus, link: Link, lease_time_s: int) -> Served:
    await serve_subnet(bus, link, lease_time_s)
    counters = ServerCounters()
    server = await serve_interface(link.server_interface, "rack-1", RegionLeaseSource(bus), counters=counters)
    return Served(bus, server, counters)


@pytest.fixture
async def served(
    nats_server: NatsServer, database_dsn: str, bus: Bus, link: Link, request: pytest.FixtureRequest
) -> AsyncIterator[Served]:
    lease_time_s = getattr(request, "param", 600)
    async with running_region(nats_server, database_dsn, "r1"):
        served = await serve(bus, link, lease_time_s)
        try:
            yield served
        finally:
            await served.server.close()


@contextlib.asynccontextmanager
async def background(link: Link, *argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running client in the namespace (output in <records>/client.log); killed on the way out."""
    log = (link.records / "client.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        "ip",
        "netns",
        "exec",
        link.namespace,
        *argv,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), 5)
        log.close()
        print((link.records / "client.log").read_text(errors="replace"))


async def in_namespace(link: Link, *argv: str, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, str]:
    return await run("ip", "netns", "exec", link.namespace, *argv, timeout=timeout)


async def wait_for_record(link: Link, event: str, timeout: float = CLIENT_TIMEOUT_S) -> dict[str, str]:
    path = link.records / f"{event}.env"
    await eventually(lambda: asyncio.sleep(0, path.exists()), bool, timeout=timeout)
    return link.record(event)


async def leases_of(bus: Bus, mac: str) -> list[Lease]:
    return (await bus.request(LEASE_LIST, LeaseListQuery(mac=mac, active_only=False), timeout=5)).leases


async def udhcpc_once(link: Link, script: Path, *flags: str) -> tuple[int, str]:
    assert UDHCPC is not None
    argv = [UDHCPC, "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1", "-i", link.client_interface, "-s", str(script)]
    return await in_namespace(link, *argv, *flags)


async def neighbour_of(link: Link, address: str) -> str:
    status, output = await run("ip", "neigh", "show", address, "dev", link.server_interface)
    assert status == 0, output
    return output.strip()


def assert_configured_from_subnet(link: Link, address: str, router: str, dns: str, lease: str) -> None:
    assert link.ip(100) <= IPv4Address(address) <= link.ip(120)
    assert router == str(link.ip(1))
    assert dns.split() == [str(link.ip(2))]
    assert lease == "600"


@needs_udhcpc
async def test_udhcpc_is_given_an_address_of_the_range_with_router_dns_and_lease_time(
    served: Served, link: Link, client_script: Path
) -> None:
    status, output = await udhcpc_once(link, client_script)

    assert status == 0, output
    bound = link.record("bound")
    assert_configured_from_subnet(link, bound["ip"], bound["router"], bound["dns"], bound["lease"])
    assert bound["serverid"] == str(link.ip(2))
    [lease] = await leases_of(served.bus, link.client_mac)
    assert (str(lease.ip), lease.state) == (bound["ip"], LeaseState.BOUND)
    assert served.counters.replied == {"OFFER": 1, "ACK": 1}
    assert served.counters.neighbour_fallbacks == 0
    assert link.client_mac in await neighbour_of(link, bound["ip"])  # the OFFER went unicast to yiaddr at chaddr


@needs_udhcpc
async def test_a_client_asking_for_broadcast_replies_is_answered_by_broadcast(
    served: Served, link: Link, client_script: Path
) -> None:
    status, output = await udhcpc_once(link, client_script, "-B")

    assert status == 0, output
    address = link.record("bound")["ip"]
    assert IPv4Address(address) in (link.ip(n) for n in range(100, 121))
    assert served.counters.replied == {"OFFER": 1, "ACK": 1}
    assert await neighbour_of(link, address) == ""  # nothing was unicast to the client


@needs_dhclient
async def test_dhclient_binds_a_lease_and_releases_it(served: Served, link: Link, client_script: Path) -> None:
    assert DHCLIENT is not None
    files = ["-lf", str(link.records / "dhclient.leases"), "-pf", str(link.records / "dhclient.pid")]
    common = [DHCLIENT, "-4", "-v", *files, "-sf", str(client_script)]
    async with background(link, *common, "-1", "-d", link.client_interface):
        bound = await wait_for_record(link, "BOUND")
        assert_configured_from_subnet(
            link,
            bound["new_ip_address"],
            bound["new_routers"],
            bound["new_domain_name_servers"],
            bound["new_dhcp_lease_time"],
        )
        [lease] = await leases_of(served.bus, link.client_mac)
        assert (str(lease.ip), lease.state) == (bound["new_ip_address"], LeaseState.BOUND)

        status, output = await in_namespace(link, *common, "-r", link.client_interface)

        assert status == 0, output
        released = await eventually(
            lambda: leases_of(served.bus, link.client_mac),
            lambda leases: [lease.state for lease in leases] == [LeaseState.RELEASED],
        )
        assert str(released[0].ip) == bound["new_ip_address"]
        assert served.counters.received["RELEASE"] == 1


@needs_udhcpc
@pytest.mark.parametrize("served", [30], indirect=True)
async def test_udhcpc_renewal_moves_the_lease_expiry_forward(served: Served, link: Link, client_script: Path) -> None:
    assert UDHCPC is not None
    argv = [UDHCPC, "-f", "-t", "5", "-T", "1", "-A", "1", "-i", link.client_interface, "-s", str(client_script)]
    async with background(link, *argv) as udhcpc:
        bound = await wait_for_record(link, "bound")
        assert bound["lease"] == "30"
        [first] = await leases_of(served.bus, link.client_mac)
        await asyncio.sleep(1.0)

        os.kill(udhcpc.pid, signal.SIGUSR1)  # busybox udhcpc: renew now
        renewed = await wait_for_record(link, "renew")

        assert renewed["ip"] == bound["ip"]
        [second] = await leases_of(served.bus, link.client_mac)
        assert second.state is LeaseState.BOUND
        assert second.expires_at > first.expires_at
        assert served.counters.received["REQUEST"] == 2


@needs_udhcpc
async def test_a_malformed_datagram_is_dropped_and_counted_and_the_server_keeps_answering(
    served: Served, link: Link, client_script: Path
) -> None:
    status, output = await udhcpc_once(link, client_script)
    assert status == 0, output
    sender = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.sendto(b'\\x01' * 20, (sys.argv[1], 67))"
    )

    status, output = await in_namespace(link, sys.executable, "-c", sender, str(link.ip(2)), timeout=10)

    assert status == 0, output
    await eventually(lambda: asyncio.sleep(0, served.counters.dropped), lambda dropped: sum(dropped.values()) == 1)
    assert served.counters.dropped == {"decode: truncated header": 1}
    (link.records / "bound.env").unlink()
    status, output = await udhcpc_once(link, client_script)
    assert status == 0, output
    assert link.record("bound")["ip"] in {str(lease.ip) for lease in await leases_of(served.bus, link.client_mac)}


@needs_udhcpc
async def test_the_service_answers_on_its_configured_interface_and_announces_itself(
    nats_server: NatsServer, database_dsn: str, bus: Bus, link: Link, client_script: Path
) -> None:
    settings = RackDhcpSettings(
        nats_url=nats_server.url,
        rack_id="rack-wired",
        serve_interfaces=[link.server_interface],
        interfaces=[],
        heartbeat_interval_s=0.2,
    )
    async with running_region(nats_server, database_dsn, "r1"):
        stop = asyncio.Event()
        service = asyncio.create_task(run_rack_dhcp(settings, stop))
        try:
            await serve_subnet(bus, link, 600)
            status, output = await udhcpc_once(link, client_script)  # its retransmits cover the service's start
            announced = await eventually(lambda: services_of_rack(database_dsn, "rack-wired"), bool)
        finally:
            stop.set()
            await asyncio.wait_for(service, 10)

    assert status == 0, output
    [lease] = await leases_of_in_database(database_dsn, link.client_mac)
    assert lease == (IPv4Address(link.record("bound")["ip"]), "bound", "rack-wired")
    assert announced == ["rack-dhcp"]


async def services_of_rack(dsn: str, rack_id: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT service FROM rack_services WHERE rack_id = $1", rack_id)
    finally:
        await connection.close()
    return [row["service"] for row in rows]


async def leases_of_in_database(dsn: str, mac: str) -> list[tuple[IPv4Address, str, str]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT ip, state, rack_id FROM leases WHERE mac = $1::macaddr", mac)
    finally:
        await connection.close()
    return [(row["ip"], row["state"], row["rack_id"]) for row in rows]
