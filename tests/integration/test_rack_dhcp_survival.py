"""rack-dhcp keeps real clients bound while the region is away, beside another rack, and behind a relay.

Every server runs in-process; its socket is opened inside a network namespace made for the test (setns around
the socket call), so the servers and clients talk on links nobody else sees while the region and NATS stay on
the root namespace's loopback. Namespaces and client processes are removed in teardown.
"""

import asyncio
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.leases import SubnetCreate
from metalbus.contracts.racks import RackServiceKind
from metalbus.rack_presence import keep_present
from metalbus.subjects import SUBNET_CREATE
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource, snapshot_fetcher
from metalbus_rack_dhcp.policy import RackView
from metalbus_rack_dhcp.region_client import RegionLeaseSource
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, open_interface_socket
from metalbus_rack_dhcp.settings import RackDhcpSettings
from tests.conftest import NatsServer
from tests.integration.test_rack_dhcp_clients import CLIENT_SCRIPT, run_sync
from tests.integration.test_region import eventually, running_region

UDHCPC = shutil.which("udhcpc")
DHCRELAY = shutil.which("dhcrelay")
CLONE_NEWNET = 0x40000000
WAIT_S = 20.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and port 67 need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed"),
    pytest.mark.skipif(UDHCPC is None, reason="udhcpc is not installed (scripts/setup.sh installs it)"),
]


def _setns(descriptor: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(descriptor, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def socket_in_namespace(namespace: str, interface: str) -> socket.socket:
    """Port 67 of ``interface`` inside ``namespace``; this thread is back in its own namespace on return."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{namespace}") as target:
        _setns(target.fileno())
        try:
            return open_interface_socket(interface)
        finally:
            _setns(home.fileno())


@dataclass
class Client:
    namespace: str
    interface: str
    records: Path
    process: asyncio.subprocess.Process | None = None

    def record(self, event: str) -> dict[str, str] | None:
        path = self.records / f"{event}.env"
        if not path.exists():
            return None
        return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@dataclass
class Topology:
    """Namespaces, links and processes made by one test; ``close`` removes them all."""

    tmp: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    servers: list[DhcpProtocol] = field(default_factory=list)

    def namespace(self, role: str) -> str:
        name = f"mbv{self.suffix}{role}"
        run_sync("ip", "netns", "add", name)
        self.namespaces.append(name)
        run_sync("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def wire(self, left: str, left_if: str, right: str, right_if: str) -> None:
        """A veth pair from ``left`` to ``right`` (both up)."""
        run_sync("ip", "-n", left, "link", "add", left_if, "type", "veth", "peer", "name", right_if, "netns", right)
        run_sync("ip", "-n", left, "link", "set", left_if, "up")
        run_sync("ip", "-n", right, "link", "set", right_if, "up")

    def bridge(self, namespace: str, name: str = "br0") -> str:
        run_sync("ip", "-n", namespace, "link", "add", name, "type", "bridge", "forward_delay", "0")
        run_sync("ip", "-n", namespace, "link", "set", name, "up")
        return name

    def attach(self, namespace: str, interface: str, bridge: str = "br0") -> None:
        run_sync("ip", "-n", namespace, "link", "set", interface, "master", bridge)

    def address(self, namespace: str, interface: str, cidr: str) -> None:
        run_sync("ip", "-n", namespace, "addr", "add", cidr, "dev", interface)

    def client(self, namespace: str, interface: str) -> Client:
        records = self.tmp / f"{namespace}-{interface}"
        records.mkdir()
        script = records / "record-env.sh"
        script.write_text(CLIENT_SCRIPT.replace("{records}", str(records)))
        script.chmod(0o755)
        return Client(namespace, interface, records)

    async def start(self, namespace: str, *argv: str, log: Path) -> asyncio.subprocess.Process:
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", namespace, *argv, stdout=output, stderr=asyncio.subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    async def udhcpc(self, client: Client) -> None:
        assert UDHCPC is not None
        argv = [UDHCPC, "-f", "-t", "20", "-T", "1", "-A", "1", "-i", client.interface]
        script = str(client.records / "record-env.sh")
        client.process = await self.start(client.namespace, *argv, "-s", script, log=client.records / "udhcpc.log")

    async def serve(self, namespace: str, interface: str, address: str, rack_id: str, leases: object) -> DhcpProtocol:
        assert isinstance(leases, CachedLeaseSource)
        rack = RackView(rack_id=rack_id, link_address=IPv4Address(address))
        server = DhcpProtocol(interface, rack, leases, counters=ServerCounters(), neighbour_setter=None)
        sock = socket_in_namespace(namespace, interface)
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: server, sock=sock)
        self.servers.append(server)
        return server

    async def close(self) -> None:
        for server in self.servers:
            await server.close()
        for process in self.processes:
            if process.returncode is None:
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
        for name in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                run_sync("ip", "netns", "del", name)


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    topology = Topology(tmp_path)
    try:
        yield topology
    finally:
        await topology.close()


@dataclass
class Rack:
    cache: CachedLeaseSource


@contextlib.asynccontextmanager
async def rack_leases(nats_server: NatsServer, bus: Bus, rack_id: str, *addresses: str) -> AsyncIterator[Rack]:
    """The rack's lease source as the service wires it (snapshot refreshed every 0.3 s), the rack announced
    with ``addresses`` as its interfaces (the region gives a rack the snapshot of the subnets it sits on)."""
    settings = RackDhcpSettings(
        nats_url=nats_server.url,
        rack_id=rack_id,
        interfaces=[IPv4Interface(address) for address in addresses],
        heartbeat_interval_s=0.2,
    )
    region = RegionLeaseSource(bus, timeout_s=1.0, subnet_cache_s=0)
    cache = CachedLeaseSource(region, snapshot_fetcher(bus, rack_id, 1.0))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(cache.keep_fresh(stop, 0.3)),
        asyncio.create_task(keep_present(bus, RackServiceKind.DHCP, settings, stop)),
    ]
    try:
        yield Rack(cache)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def create_subnet(bus: Bus, prefix: str, lease_time_s: int) -> None:
    subnet = SubnetCreate(
        cidr=f"{prefix}.0/24",
        gateway=IPv4Address(f"{prefix}.1"),
        dynamic_start=IPv4Address(f"{prefix}.100"),
        dynamic_end=IPv4Address(f"{prefix}.120"),
        lease_time_s=lease_time_s,
    )
    await eventually(lambda: bus.request(SUBNET_CREATE, subnet, timeout=5), lambda created: True, timeout=WAIT_S)


async def wait_for_record(client: Client, event: str) -> dict[str, str]:
    record = await eventually(lambda: asyncio.sleep(0, client.record(event)), bool, timeout=WAIT_S)
    assert record is not None
    return record


async def bound_leases(dsn: str) -> list[tuple[str, IPv4Address, datetime]]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT mac::text, ip, expires_at FROM leases WHERE state = 'bound' ORDER BY ip")
    finally:
        await connection.close()
    return [(row["mac"], row["ip"], row["expires_at"]) for row in rows]


def prefix(first: int) -> str:
    return f"10.{first}.{secrets.randbelow(250) + 1}"


def one_link(topology: Topology, net: str) -> tuple[str, Client]:
    """A server namespace and a client namespace on one veth; the server at <net>.2."""
    server_ns, client_ns = topology.namespace("s"), topology.namespace("c")
    topology.wire(server_ns, "srv0", client_ns, "eth0")
    topology.address(server_ns, "srv0", f"{net}.2/24")
    return server_ns, topology.client(client_ns, "eth0")


async def test_while_the_region_is_away_a_renewal_is_acked_from_the_cache_and_reconciled_when_it_returns(
    nats_server: NatsServer, database_dsn: str, bus: Bus, topology: Topology
) -> None:
    net = prefix(77)
    server_ns, client = one_link(topology, net)
    async with rack_leases(nats_server, bus, "rack-1", f"{net}.2/24") as rack:
        async with running_region(nats_server, database_dsn, "r1"):
            await create_subnet(bus, net, 30)
            server = await topology.serve(server_ns, "srv0", f"{net}.2", "rack-1", rack.cache)
            await topology.udhcpc(client)
            bound = await wait_for_record(client, "bound")
            [(_, address, first_expiry)] = await bound_leases(database_dsn)
            assert str(address) == bound["ip"]
        await asyncio.sleep(1.0)  # the region is gone; NATS stays

        assert client.process is not None
        os.kill(client.process.pid, signal.SIGUSR1)  # busybox udhcpc: renew now
        renewed = await wait_for_record(client, "renew")

        assert renewed["ip"] == bound["ip"]
        assert rack.cache.counters.local_renewals == 1
        assert server.counters.replied["ACK"] == 2
        assert [expiry for _, _, expiry in await bound_leases(database_dsn)] == [first_expiry]
        async with running_region(nats_server, database_dsn, "r1"):
            reconciled = await eventually(
                lambda: bound_leases(database_dsn), lambda leases: leases[0][2] > first_expiry, timeout=WAIT_S
            )
        assert [str(ip) for _, ip, _ in reconciled] == [bound["ip"]]
        assert rack.cache.pending == []


async def test_two_racks_on_one_subnet_never_hand_out_an_address_twice_and_one_rack_is_enough(
    nats_server: NatsServer, database_dsn: str, bus: Bus, topology: Topology
) -> None:
    net = prefix(76)
    switch = topology.namespace("w")
    topology.bridge(switch)
    racks = []
    for index, rack_id in enumerate(("rack-a", "rack-b")):
        server_ns = topology.namespace(f"s{index}")
        topology.wire(server_ns, "srv0", switch, f"ps{index}")
        topology.attach(switch, f"ps{index}")
        topology.address(server_ns, "srv0", f"{net}.{2 + index}/24")
        racks.append((server_ns, rack_id, f"{net}.{2 + index}"))
    clients = []
    for index in range(6):
        client_ns = topology.namespace(f"c{index}")
        topology.wire(client_ns, "eth0", switch, f"pc{index}")
        topology.attach(switch, f"pc{index}")
        clients.append(topology.client(client_ns, "eth0"))

    async with (
        running_region(nats_server, database_dsn, "r1"),
        rack_leases(nats_server, bus, "rack-a", f"{net}.2/24") as rack_a,
        rack_leases(nats_server, bus, "rack-b", f"{net}.3/24") as rack_b,
    ):
        await create_subnet(bus, net, 30)
        servers = [
            await topology.serve(namespace, "srv0", address, rack_id, rack.cache)
            for (namespace, rack_id, address), rack in zip(racks, (rack_a, rack_b), strict=True)
        ]
        for client in clients:
            await topology.udhcpc(client)
        bound = [await wait_for_record(client, "bound") for client in clients]

        leases = await bound_leases(database_dsn)
        assert sorted(str(ip) for _, ip, _ in leases) == sorted(record["ip"] for record in bound)
        assert len({ip for _, ip, _ in leases}) == len({mac for mac, _, _ in leases}) == 6

        busiest = Counter(record["serverid"] for record in bound).most_common(1)[0][0]
        [stopped] = [server for server in servers if str(server.rack.link_address) == busiest]
        [survivor] = [server for server in servers if server is not stopped]
        await stopped.close()  # at least half of the clients lose the server they are bound to
        acks_before = survivor.counters.replied["ACK"]
        for client in clients:
            assert client.process is not None
            os.kill(client.process.pid, signal.SIGUSR1)
        renewed = [await wait_for_record(client, "renew") for client in clients]

        assert [record["ip"] for record in renewed] == [record["ip"] for record in bound]
        assert {record["serverid"] for record in renewed} == {str(survivor.rack.link_address)}
        assert survivor.counters.replied["ACK"] >= acks_before + 6
        after = await bound_leases(database_dsn)
        assert sorted(str(ip) for _, ip, _ in after) == sorted(record["ip"] for record in bound)
        assert set(await lease_racks(database_dsn)) == {survivor.rack.rack_id}


async def lease_racks(dsn: str) -> list[str]:
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch("SELECT rack_id FROM leases WHERE state = 'bound'")
    finally:
        await connection.close()
    return [row["rack_id"] for row in rows]


@pytest.mark.skipif(DHCRELAY is None, reason="dhcrelay is not installed (isc-dhcp-relay; scripts/setup.sh installs it)")
async def test_a_relayed_client_gets_an_address_of_the_subnet_its_relay_sits_on(
    nats_server: NatsServer, database_dsn: str, bus: Bus, topology: Topology
) -> None:
    assert DHCRELAY is not None
    rack_net, far_net = prefix(77), prefix(78)
    server_ns, relay_ns, client_ns = topology.namespace("s"), topology.namespace("r"), topology.namespace("c")
    topology.wire(server_ns, "srv0", relay_ns, "up0")
    topology.wire(relay_ns, "down0", client_ns, "eth0")
    topology.address(server_ns, "srv0", f"{rack_net}.2/24")
    topology.address(relay_ns, "up0", f"{rack_net}.1/24")
    topology.address(relay_ns, "down0", f"{far_net}.1/24")
    run_sync("ip", "-n", server_ns, "route", "add", f"{far_net}.0/24", "via", f"{rack_net}.1")
    client = topology.client(client_ns, "eth0")

    async with (
        running_region(nats_server, database_dsn, "r1"),
        rack_leases(nats_server, bus, "rack-1", f"{rack_net}.2/24") as rack,
    ):
        await create_subnet(bus, rack_net, 600)
        await create_subnet(bus, far_net, 600)
        server = await topology.serve(server_ns, "srv0", f"{rack_net}.2", "rack-1", rack.cache)
        relay = [DHCRELAY, "-4", "-d", "-pf", str(topology.tmp / "dhcrelay.pid"), "-id", "down0", "-iu", "up0"]
        await topology.start(relay_ns, *relay, f"{rack_net}.2", log=topology.tmp / "dhcrelay.log")
        await topology.udhcpc(client)
        bound = await wait_for_record(client, "bound")

        assert IPv4Address(f"{far_net}.100") <= IPv4Address(bound["ip"]) <= IPv4Address(f"{far_net}.120")
        assert bound["router"] == f"{far_net}.1"
        assert [str(ip) for _, ip, _ in await bound_leases(database_dsn)] == [bound["ip"]]
        assert server.counters.replied["ACK"] == 1
