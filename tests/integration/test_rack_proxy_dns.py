"""rack-proxy's DNS against a real region (NATS + PostgreSQL), real rack announcements and leases, a real upstream
resolver (dnsmasq) and a real client: dig, over UDP and TCP."""

import asyncio
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv4Interface

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.dns import DnsZoneQuery
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.leases import LeaseCommitRequest, LeaseOfferRequest, SubnetCreate
from metalbus.contracts.machines import MachineCreate
from metalbus.contracts.racks import RackServiceAnnouncement, RackServiceHeartbeat, RackServiceKind
from metalbus.subjects import (
    DNS_ZONE,
    LEASE_COMMIT,
    LEASE_OFFER,
    MACHINE_CREATE,
    RACK_ANNOUNCE,
    RACK_HEARTBEAT,
    REGION_HEALTH,
    SUBNET_CREATE,
)
from metalbus_rack_proxy.dns_forwarder import Upstream
from metalbus_rack_proxy.dns_service import DnsConfig, running_dns
from tests.conftest import NatsServer, free_port
from tests.integration.test_region import eventually, running_region

SUBNET_NAME = "10-20-0-0-24.maas-internal"
OTHER_SUBNET_NAME = "10-30-0-0-24.maas-internal"
UPSTREAM_NAME, UPSTREAM_ADDRESS = "www.example.test", "192.0.2.7"
QUICK_REFRESH_S = 0.3
NO_REFRESH_S = 600.0  # long enough that only an event can explain a change


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """dnsmasq as the upstream resolver: answers example.test itself, knows nothing else, never asks further."""
    port = free_port()
    process = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
         "--listen-address=127.0.0.1", f"--port={port}", f"--address=/example.test/{UPSTREAM_ADDRESS}",
         "--pid-file=", "--log-facility=-", "--user=root"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_udp_dns(port)
        yield Upstream("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_udp_dns(port: int) -> None:
    for _ in range(50):
        probe = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(port), "+short", "+tries=1", "+time=1", "probe.example.test"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if probe.stdout.strip() == UPSTREAM_ADDRESS:
            return
        time.sleep(0.1)
    raise AssertionError(f"dnsmasq did not answer on port {port}")


@asynccontextmanager
async def region_with_subnets(nats: NatsServer, dsn: str, bus: Bus) -> AsyncIterator[None]:
    async with running_region(nats, dsn, "r1"):
        await eventually(lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), lambda h: h.database_reachable)
        for cidr, prefix in (("10.20.0.0/24", "10.20.0"), ("10.30.0.0/24", "10.30.0")):
            await bus.request(
                SUBNET_CREATE,
                SubnetCreate.model_validate(
                    {"cidr": cidr, "gateway": f"{prefix}.1", "dynamic_start": f"{prefix}.100",
                     "dynamic_end": f"{prefix}.199"}
                ),
            )  # fmt: skip
        yield


@pytest.fixture
async def region(nats_server: NatsServer, database_dsn: str, bus: Bus) -> AsyncIterator[Bus]:
    async with region_with_subnets(nats_server, database_dsn, bus):
        yield bus


async def announce(
    bus: Bus, rack_id: str, address: str, *, service: RackServiceKind = RackServiceKind.PROXY, interval: float = 30
) -> str:
    """The rack service announces itself with one interface; returns the identity its heartbeats carry."""
    ack = await bus.request(
        RACK_ANNOUNCE,
        RackServiceAnnouncement(
            rack_id=rack_id,
            service=service,
            hostname=f"lab-{rack_id}",
            version="0.1.0",
            heartbeat_interval_s=interval,
            interfaces=[IPv4Interface(address)],
        ),
    )
    assert ack.service_token is not None
    return ack.service_token


async def keep_heartbeating(bus: Bus, rack_id: str, token: str, interval: float) -> None:
    heartbeat = RackServiceHeartbeat(rack_id=rack_id, service=RackServiceKind.PROXY, service_token=token)
    while True:
        assert (await bus.request(RACK_HEARTBEAT, heartbeat, timeout=2)).known
        await asyncio.sleep(interval)


def dns_config(upstream: Upstream, refresh_s: float = QUICK_REFRESH_S) -> DnsConfig:
    return DnsConfig(address="127.0.0.1", port=free_port(), upstreams=(upstream,), zone_refresh_s=refresh_s)


async def dig(dns_port: int, *arguments: str) -> str:
    """dig against the rack (one try, two seconds): its full output."""
    process = await asyncio.create_subprocess_exec(
        "dig", "@127.0.0.1", "-p", str(dns_port), "+tries=1", "+time=2", *arguments,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=20)
    return output.decode()


async def resolved(dns_port: int, name: str, *options: str) -> list[str]:
    """The addresses dig printed for ``name``, in the order the server gave them."""
    return (await dig(dns_port, "+short", *options, name, "A")).split()


async def test_a_subnet_name_resolves_to_every_healthy_rack_proxy_on_it_in_rotating_order(
    region: Bus, upstream: Upstream
) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    await announce(region, "rack-b", "10.20.0.3/24")
    await announce(region, "rack-c", "10.30.0.2/24")  # another subnet
    await announce(region, "rack-d", "10.20.0.4/24", service=RackServiceKind.DHCP)  # no proxy on that rack
    async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
        first = await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: len(found) == 2)
        second = await resolved(rack_dns.port, SUBNET_NAME)
        third = await resolved(rack_dns.port, SUBNET_NAME)
        assert sorted(first) == ["10.20.0.2", "10.20.0.3"]
        assert second == first[::-1] and third == first
        assert await resolved(rack_dns.port, OTHER_SUBNET_NAME) == ["10.30.0.2"]


async def test_a_rack_whose_heartbeats_stop_leaves_the_subnet_name_within_seconds(
    region: Bus, upstream: Upstream
) -> None:
    interval = 0.5  # healthy while heard from within three intervals
    tokens = {rack: await announce(region, rack, address, interval=interval)
              for rack, address in (("rack-a", "10.20.0.2/24"), ("rack-b", "10.20.0.3/24"))}  # fmt: skip
    heartbeats = {rack: asyncio.create_task(keep_heartbeating(region, rack, token, interval))
                  for rack, token in tokens.items()}  # fmt: skip
    try:
        async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
            await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: len(found) == 2)
            heartbeats["rack-b"].cancel()
            loop = asyncio.get_running_loop()
            stopped = loop.time()
            await eventually(
                lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"], timeout=10
            )
            assert loop.time() - stopped < 5
            assert await resolved(rack_dns.port, SUBNET_NAME) == ["10.20.0.2"]
    finally:
        for task in heartbeats.values():
            task.cancel()
        await asyncio.gather(*heartbeats.values(), return_exceptions=True)


async def test_a_newly_announced_rack_appears_on_its_event_without_waiting_for_a_refresh(
    region: Bus, upstream: Upstream
) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    async with running_dns(dns_config(upstream, NO_REFRESH_S), bus=region, rack_id="rack-a") as rack_dns:
        await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"])
        await announce(region, "rack-b", "10.20.0.3/24")
        found = await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda f: len(f) == 2, timeout=5)
        assert sorted(found) == ["10.20.0.2", "10.20.0.3"]


async def test_a_rack_whose_heartbeats_lapsed_is_back_on_its_first_heartbeat_without_waiting_for_a_refresh(
    region: Bus, upstream: Upstream
) -> None:
    interval = 0.3  # unhealthy once not heard from for three intervals
    await announce(region, "rack-a", "10.20.0.2/24")
    token = await announce(region, "rack-b", "10.20.0.3/24", interval=interval)
    heartbeat = RackServiceHeartbeat(rack_id="rack-b", service=RackServiceKind.PROXY, service_token=token)
    async with running_dns(dns_config(upstream, NO_REFRESH_S), bus=region, rack_id="rack-a") as rack_dns:
        await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: len(found) == 2)
        await asyncio.sleep(interval * 4)  # rack-b's heartbeats lapse ...
        await announce(region, "rack-c", "10.30.0.2/24")  # ... and another rack's event refreshes the zone
        await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"])

        assert (await region.request(RACK_HEARTBEAT, heartbeat, timeout=2)).known  # rack-b is back
        found = await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda f: len(f) == 2, timeout=5)
        assert sorted(found) == ["10.20.0.2", "10.20.0.3"]


async def test_a_heartbeat_within_the_healthy_window_publishes_nothing(region: Bus, database_dsn: str) -> None:
    token = await announce(region, "rack-b", "10.20.0.3/24", interval=30)
    heartbeat = RackServiceHeartbeat(rack_id="rack-b", service=RackServiceKind.PROXY, service_token=token)
    for _ in range(3):
        assert (await region.request(RACK_HEARTBEAT, heartbeat, timeout=2)).known
    connection = await asyncpg.connect(database_dsn)
    try:
        kinds = await connection.fetch(
            "SELECT payload->>'kind' AS kind FROM events WHERE subject LIKE 'events.rack.%' ORDER BY sequence"
        )
    finally:
        await connection.close()
    assert [row["kind"] for row in kinds] == ["announced"]


async def test_a_machine_hostname_resolves_to_its_bound_lease_and_back(region: Bus, upstream: Upstream) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    async with running_dns(dns_config(upstream, NO_REFRESH_S), bus=region, rack_id="rack-a") as rack_dns:
        await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"])
        await region.request(MACHINE_CREATE, MachineCreate(hostname="node-7", boot_mac="52:54:00:00:00:07"))
        offered = await region.request(
            LEASE_OFFER,
            LeaseOfferRequest(rack_id="rack-a", mac="52:54:00:00:00:07", link_address=IPv4Address("10.20.0.2")),
        )
        lease = await region.request(
            LEASE_COMMIT, LeaseCommitRequest(rack_id="rack-a", mac="52:54:00:00:00:07", ip=offered.lease.ip)
        )
        found = await eventually(lambda: resolved(rack_dns.port, "node-7.maas-internal"), bool, timeout=5)
        assert found == [str(lease.ip)]
        assert (await dig(rack_dns.port, "+short", "-x", str(lease.ip))).split() == ["node-7.maas-internal."]


async def test_unknown_names_in_the_domain_are_nxdomain(region: Bus, upstream: Upstream) -> None:
    async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
        await eventually(lambda: dig(rack_dns.port, SUBNET_NAME), lambda output: "status: NOERROR" in output)
        output = await dig(rack_dns.port, "nobody.maas-internal")
        assert "status: NXDOMAIN" in output and "maas-internal.\t\t5\tIN\tSOA\tns.maas-internal." in output


async def test_other_names_are_forwarded_to_the_upstream_resolver(region: Bus, upstream: Upstream) -> None:
    async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
        assert await resolved(rack_dns.port, UPSTREAM_NAME) == [UPSTREAM_ADDRESS]
        assert rack_dns.counters.forwarded >= 1 and rack_dns.counters.forward_failures == 0


async def test_queries_over_tcp_get_the_same_answers(region: Bus, upstream: Upstream) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    await announce(region, "rack-b", "10.20.0.3/24")
    async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
        first = await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME, "+tcp"), lambda found: len(found) == 2)
        assert sorted(first) == ["10.20.0.2", "10.20.0.3"]
        assert await resolved(rack_dns.port, SUBNET_NAME, "+tcp") == first[::-1]
        assert await resolved(rack_dns.port, UPSTREAM_NAME, "+tcp") == [UPSTREAM_ADDRESS]
        assert "status: NXDOMAIN" in await dig(rack_dns.port, "+tcp", "nobody.maas-internal")


async def test_the_last_zone_is_served_while_the_region_is_away(
    nats_server: NatsServer, database_dsn: str, bus: Bus, upstream: Upstream
) -> None:
    async with running_dns(dns_config(upstream), bus=bus, rack_id="rack-a") as rack_dns:
        async with region_with_subnets(nats_server, database_dsn, bus):
            await announce(bus, "rack-a", "10.20.0.2/24")
            await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"])
        assert rack_dns.feed is not None
        failures = rack_dns.feed.refresh_failures
        feed = rack_dns.feed
        await until(lambda: feed.refresh_failures > failures)
        assert await resolved(rack_dns.port, SUBNET_NAME) == ["10.20.0.2"]


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async def probe() -> bool:
        await asyncio.sleep(0.05)
        return condition()

    await eventually(probe, bool, timeout=timeout)


def send_garbage(port: int) -> None:
    """Junk datagrams, then TCP connections carrying junk, a response, and a frame cut short."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for junk in (b"", b"\x00" * 5, b"\xff" * 64, bytes(12), b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\xc0"):
            udp.sendto(junk, ("127.0.0.1", port))
    for frame in (b"\xff" * 40, bytes.fromhex("0001810000010000000000000161000001000100")):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
            tcp.sendall(struct.pack("!H", len(frame)) + frame)
            tcp.settimeout(5)
            assert tcp.recv(100) == b""  # closed without an answer
    with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
        tcp.sendall(b"\x00\x40abc")  # promises 64 bytes, sends 3, hangs up


async def test_garbage_over_udp_and_tcp_is_counted_and_the_server_keeps_answering(
    region: Bus, upstream: Upstream
) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    async with running_dns(dns_config(upstream), bus=region, rack_id="rack-a") as rack_dns:
        await eventually(lambda: resolved(rack_dns.port, SUBNET_NAME), lambda found: found == ["10.20.0.2"])
        await asyncio.to_thread(send_garbage, rack_dns.port)
        await until(lambda: rack_dns.counters.dropped_malformed >= 7, timeout=5)
        assert rack_dns.counters.replies_by_rcode["FORMERR"] == 2  # the two readable headers
        assert await resolved(rack_dns.port, SUBNET_NAME) == ["10.20.0.2"]


async def test_the_region_zone_holds_only_bound_unexpired_leases_and_takes_its_domain_from_the_settings(
    region: Bus, database_dsn: str
) -> None:
    await announce(region, "rack-a", "10.20.0.2/24")
    for hostname, mac in (("node-1", "52:54:00:00:00:01"), ("node-2", "52:54:00:00:00:02")):
        await region.request(MACHINE_CREATE, MachineCreate(hostname=hostname, boot_mac=mac))
        offered = await region.request(
            LEASE_OFFER, LeaseOfferRequest(rack_id="rack-a", mac=mac, link_address=IPv4Address("10.20.0.2"))
        )
        await region.request(LEASE_COMMIT, LeaseCommitRequest(rack_id="rack-a", mac=mac, ip=offered.lease.ip))
    conn = await asyncpg.connect(database_dsn)
    try:
        await conn.execute("UPDATE leases SET expires_at = now() - interval '1 second' WHERE mac = '52:54:00:00:00:02'")
        await conn.execute("INSERT INTO region_settings (name, value) VALUES ('dns_internal_domain', '\"lab.test\"')")
    finally:
        await conn.close()
    zone = await region.request(DNS_ZONE, DnsZoneQuery(rack_id="rack-a"))
    assert zone.domain == "lab.test"
    assert [(host.hostname, str(host.address)) for host in zone.hosts] == [("node-1", "10.20.0.100")]
    assert [(subnet.name, [str(a) for a in subnet.rack_addresses]) for subnet in zone.subnets] == [
        ("10-20-0-0-24.lab.test", ["10.20.0.2"]),
        ("10-30-0-0-24.lab.test", []),
    ]
    later = await region.request(DNS_ZONE, DnsZoneQuery(rack_id="rack-a"))
    assert later.serial >= zone.serial
