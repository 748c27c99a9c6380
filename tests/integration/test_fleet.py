"""Ten virtual machines of the fleet simulator are commissioned to READY by the real rack services and region.

The region runs in-process on real NATS and PostgreSQL; rack-dhcp and rack-tftp (TFTP, HTTP boot and the /MAAS
metadata proxy) run as their ``__main__`` runs them, on the root-namespace end of a veth pair; the machines live
in a network namespace made for the test, on the other end: real DHCP frames with their own MACs (option 93 of
BIOS and EFI firmware), TFTP from their leased addresses, HTTP for the (small, fake) kernel and initrd, the
metadata proxy with the OAuth credentials of their kernel command line, syslog to a port the test listens on.
Proof is observable: each machine READY in the region, the stored inventory equal to its generated profile, ten
distinct leases for ten distinct MACs in PostgreSQL, per-step timings and syslog lines from every leased address.
"""

import asyncio
import contextlib
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from metalbus.bus import Bus
from metalbus.cli.fleet import FleetOptions
from metalbus.cli.fleet import run as run_fleet_command
from metalbus.contracts.boot import BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose, MachineStatus
from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.enrolment import (
    commission_machines,
    create_machines,
    leases_of,
    machine_states,
    stored_inventories,
)
from metalbus.fleet.machine import STEPS, MachineOptions, MachineResult, VirtualMachine
from metalbus.fleet.network import fleet_network
from metalbus.fleet.profiles import fleet_profiles
from metalbus.fleet.report import render_table
from metalbus.fleet.runner import run_fleet
from metalbus.fleet.settings import FleetSettings
from metalbus.netns import NetworkNamespace
from metalbus.subjects import BOOT_RESOURCE_SET
from metalbus_rack_dhcp.__main__ import run_rack_dhcp
from metalbus_rack_dhcp.server import ServerCounters
from metalbus_rack_dhcp.settings import RackDhcpSettings
from metalbus_rack_tftp.__main__ import run_rack_tftp
from metalbus_rack_tftp.settings import RackTftpSettings
from tests.conftest import NatsServer, free_port
from tests.integration.test_rack_dhcp_clients import Link, link, serve_subnet
from tests.integration.test_region import eventually, running_region

__all__ = ["link"]  # the netns + veth fixture

MACHINES = 10
SEED = 11
RACK_ID = "rack-fleet"
IMAGE_DIR = "images/fleet"
KERNEL_BYTES, INITRD_BYTES = 96 * 1024, 256 * 1024
FLEET_DEADLINE_S = 30.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and raw sockets need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed"),
]


@pytest.fixture
def boot_root(tmp_path: Path) -> Path:
    """Loaders and a kernel and initrd that are only bytes: the fleet fetches them, nothing runs them."""
    root = tmp_path / "boot"
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / "lpxelinux.0").write_bytes(os.urandom(40 * 1024))
    (root / "bootx64.efi").write_bytes(os.urandom(60 * 1024))
    (root / IMAGE_DIR / "vmlinuz").write_bytes(os.urandom(KERNEL_BYTES))
    (root / IMAGE_DIR / "initrd.img").write_bytes(os.urandom(INITRD_BYTES))
    return root


@contextlib.asynccontextmanager
async def running(service: Coroutine[Any, Any, None], stop: asyncio.Event) -> AsyncIterator[None]:
    task = asyncio.create_task(service)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def register_images(bus: Bus) -> None:
    for architecture in (Architecture.AMD64_BIOS, Architecture.AMD64_UEFI):
        resource = BootResource(
            architecture=architecture,
            purpose=BootPurpose.COMMISSIONING,
            kernel=f"{IMAGE_DIR}/vmlinuz",
            initrd=f"{IMAGE_DIR}/initrd.img",
            kernel_params="console=ttyS0",
        )
        await eventually(partial(bus.request, BOOT_RESOURCE_SET, resource, timeout=5), lambda _: True, timeout=20)


@pytest.fixture
async def rack_tftp_port(
    nats_server: NatsServer, database_dsn: str, bus: Bus, link: Link, boot_root: Path, request: pytest.FixtureRequest
) -> AsyncIterator[int]:
    """Region, subnet (lease time: the parameter, else 600 s), images, rack-dhcp and rack-tftp up; the TFTP port
    the machines must use."""
    lease_time_s = getattr(request, "param", 600)
    http_port, tftp_port = free_port(), free_port()
    tftp_settings = RackTftpSettings(
        nats_url=nats_server.url,
        rack_id=RACK_ID,
        listen_address=str(link.ip(2)),
        port=tftp_port,
        http_port=http_port,
        boot_root=boot_root,
        metrics_port=free_port(),
    )
    dhcp_settings = RackDhcpSettings(
        nats_url=nats_server.url, rack_id=RACK_ID, serve_interfaces=[link.server_interface], http_port=http_port
    )
    tftp_stop, dhcp_stop = asyncio.Event(), asyncio.Event()
    async with running_region(nats_server, database_dsn, "r1"):
        await serve_subnet(bus, link, lease_time_s)
        await register_images(bus)
        async with (
            running(run_rack_tftp(tftp_settings, tftp_stop), tftp_stop),
            running(run_rack_dhcp(dhcp_settings, dhcp_stop, ServerCounters()), dhcp_stop),
        ):
            yield tftp_port


@pytest.fixture
def syslog_listener(link: Link) -> Iterator[socket.socket]:
    """The rack's syslog port, as the test sees it: a UDP socket on the rack's address."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((str(link.ip(2)), 0))
    listener.setblocking(False)
    yield listener
    listener.close()


def received_syslog(listener: socket.socket) -> dict[str, list[bytes]]:
    lines: dict[str, list[bytes]] = {}
    for _ in range(10_000):
        try:
            data, (source, _) = listener.recvfrom(4096)
        except BlockingIOError:
            break
        lines.setdefault(source, []).append(data)
    return lines


async def test_ten_virtual_machines_are_commissioned_to_ready_with_exactly_the_inventory_they_reported(
    bus: Bus, link: Link, rack_tftp_port: int, syslog_listener: socket.socket
) -> None:
    profiles = fleet_profiles(SEED, MACHINES)
    created = await create_machines(bus, profiles)
    commissioning = await commission_machines(bus, created)
    assert {machine.status for machine in commissioning} == {MachineStatus.COMMISSIONING}

    options = MachineOptions(dhcp_policy=RetransmitPolicy(scale=0.25), metadata_retry_scale=0.2)
    namespace = NetworkNamespace(link.namespace)
    syslog_port = syslog_listener.getsockname()[1]
    async with fleet_network(
        namespace, link.client_interface, tftp_port=rack_tftp_port, syslog_port=syslog_port
    ) as net:
        machines = [VirtualMachine(profile, net, options) for profile in profiles]
        run = await run_fleet(machines, concurrency=MACHINES, deadline_s=FLEET_DEADLINE_S)
        leftover_addresses = set(net.addresses)

    print(render_table(run.outcomes, run.elapsed_s, []))
    problems = [
        (o.profile.boot_mac, o.result, o.step, o.error) for o in run.outcomes if o.result is not MachineResult.READY
    ]
    assert problems == []
    system_ids = [machine.system_id for machine in created]
    final = await machine_states(bus, system_ids)
    assert [machine.status for machine in final] == [MachineStatus.READY] * MACHINES
    stored = await stored_inventories(bus, system_ids)
    assert stored == [profile.inventory for profile in profiles]
    assert [o.reported for o in run.outcomes] == [profile.inventory for profile in profiles]

    leases = await leases_of(bus, [profile.boot_mac for profile in profiles])
    assert len({lease.mac for lease in leases}) == MACHINES
    assert len({lease.ip for lease in leases}) == MACHINES
    assert {(lease.mac, lease.ip) for lease in leases} == {(o.profile.boot_mac, o.address) for o in run.outcomes}
    assert all(set(o.timings) == set(STEPS) and all(t > 0 for t in o.timings.values()) for o in run.outcomes)
    assert all(o.bytes_fetched >= KERNEL_BYTES + INITRD_BYTES for o in run.outcomes)
    assert {Architecture.AMD64_BIOS, Architecture.AMD64_UEFI} == {profile.architecture for profile in profiles}
    syslog = received_syslog(syslog_listener)
    assert set(syslog) == {str(o.address) for o in run.outcomes}
    assert all(b"user-data exited with 0" in b"".join(lines) for lines in syslog.values())
    assert leftover_addresses == set()


async def test_the_fleet_command_commissions_its_machines_and_reports_every_one_ready(
    nats_server: NatsServer, link: Link, rack_tftp_port: int
) -> None:
    options = FleetOptions(
        count=4, seed=SEED + 1, namespace=link.namespace, interface=link.client_interface, create_veth=False,
        rack_interface=None, rack_address="", tftp_port=rack_tftp_port, syslog_port=None, concurrency=2,
        deadline_s=FLEET_DEADLINE_S, dhcp_scale=0.25,
    )  # fmt: skip
    result = await run_fleet_command(options, FleetSettings(nats_url=nats_server.url))

    assert result.all_ready
    assert result.statuses == {profile.boot_mac: MachineStatus.READY for profile in fleet_profiles(SEED + 1, 4)}
    assert result.mismatches == []
    table = render_table(result.run.outcomes, result.run.elapsed_s, result.mismatches)
    assert "READY 4, FAILED 0, STUCK 0" in table


SHORT_LEASE_S = 30  # the shortest a subnet takes: T1 at 15 s


@pytest.mark.parametrize("rack_tftp_port", [SHORT_LEASE_S], indirect=True)
async def test_a_machine_left_on_renews_its_lease_at_t1(bus: Bus, link: Link, rack_tftp_port: int) -> None:
    profiles = fleet_profiles(SEED + 2, 3)
    created = await create_machines(bus, profiles)
    await commission_machines(bus, created)
    options = MachineOptions(dhcp_policy=RetransmitPolicy(scale=0.25), stay_on_s=SHORT_LEASE_S / 2 + 2)
    async with fleet_network(
        NetworkNamespace(link.namespace), link.client_interface, tftp_port=rack_tftp_port, syslog_port=None
    ) as net:
        run = await run_fleet([VirtualMachine(p, net, options) for p in profiles], concurrency=3, deadline_s=30)
    leases = await leases_of(bus, [profile.boot_mac for profile in profiles])
    remaining_s = [(lease.expires_at.timestamp() - time.time()) for lease in leases]

    assert [(o.result, o.renewals) for o in run.outcomes] == [(MachineResult.READY, 1)] * 3
    assert len(leases) == 3
    # Unrenewed, each lease would have at most 30 - 17 = 13 s left; renewed at ≈ 15 s, about 28 s.
    assert all(seconds > SHORT_LEASE_S - 8 for seconds in remaining_s), remaining_s
