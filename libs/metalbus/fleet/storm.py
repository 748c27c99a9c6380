"""A boot storm against the embedded stack: N fleet machines with simulated BMCs, all commissioned at once through
the REST API, and the checks of what the stack then holds (the library of bench/fleet.py, bench/drills.py and
their tests).

``storm_site`` makes a namespace and veth pair, fills the boot root with loaders and images that are only bytes,
starts the stack (``metalbus up``'s own code: nats-server, PostgreSQL, region replicas, api, one rack with
rack-dhcp on port 67 of the veth), serves the subnet, registers the images and starts the machines' BMCs;
``commission_storm`` creates the machines, sends every commission call (``in_flight`` at once; a call refused
with 5xx or a lost connection is sent again, as automation does) and waits until none is NEW or COMMISSIONING;
``storm_checks`` compares every stored inventory with what its machine reported and counts addresses leased to
two machines. Everything the site made is removed on the way out, whatever happened.
"""

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from metalbus.cli.admin import request_key, stack_connect_options
from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.bmc import BmcCredentials, SimulatedBmcs
from metalbus.fleet.enrolment import bounded_map
from metalbus.fleet.machine import MachineOptions, MachineOutcome, MachineResult
from metalbus.fleet.network import FleetNetwork, fleet_network
from metalbus.fleet.profiles import MachineProfile
from metalbus.fleet.report import inventory_mismatches
from metalbus.fleet.veth import RackHost, fleet_link
from metalbus.netns import NetworkNamespace
from metalbus.stack.config import ExtraRack, StackLayout, StackSettings
from metalbus.stack.launcher import StackError, bring_down, bring_up, recorded_stack

IMAGE_DIR = "images/amd64/ephemeral"
KERNEL_BYTES, INITRD_BYTES = 256 * 1024, 1024 * 1024
CREATE_IN_FLIGHT = 16
POLL_S = 0.25
CALL_RETRY_S = 1.0
MACHINES_SETTLE_S = 60.0
SETTLED = frozenset({"ready", "failed_commissioning", "broken"})


class StormError(RuntimeError):
    """The site could not be set up, or the API refused what the storm needs; the message says what."""


@dataclass
class StormSite:
    settings: StackSettings
    client: httpx.AsyncClient
    network: FleetNetwork
    bmcs: SimulatedBmcs
    profiles: list[MachineProfile]
    subnet: IPv4Network
    rack_interface: str
    namespace: NetworkNamespace
    rack_hosts: list[RackHost] = field(default_factory=list)
    """The further racks' namespaces (rack-2, …), on the machines' segment with the stack's own rack."""

    @property
    def state_dir(self) -> Path:
        return self.settings.state_dir


@dataclass
class StormRun:
    count: int
    system_ids: list[str] = field(default_factory=list)
    ready_after_s: float | None = None
    statuses: dict[str, int] = field(default_factory=dict)
    commission_call_s: list[float] = field(default_factory=list)
    commission_done_at: list[float] = field(default_factory=list)
    commission_retries: int = 0
    ready_at: list[float] = field(default_factory=list)
    """Seconds after the first commission call that each call was answered, and each READY was seen."""

    @property
    def ready(self) -> int:
        return self.statuses.get("ready", 0)


@dataclass(frozen=True)
class StormChecks:
    outcomes: list[MachineOutcome]
    mismatches: list[str]
    """Boot MACs whose stored inventory differs from what the machine reported, or that reported nothing."""
    lost_results: list[str]
    """Boot MACs that posted their inventory and signalled OK, yet the region stored no inventory."""
    duplicate_leases: int
    """Addresses held by the active leases of more than one machine."""
    leases_by_rack: dict[str, int] = field(default_factory=dict)
    """Machines whose latest lease each rack answered last."""
    disk_boots: int = 0
    """Power-ons that ended on the local disk: after commissioning, nothing should power a machine on again."""


def write_boot_files(layout: StackLayout) -> None:
    """Loaders, kernel and initrd that are only bytes: the fleet fetches them, nothing runs them."""
    images = layout.boot_root / IMAGE_DIR
    images.mkdir(parents=True, exist_ok=True)
    (layout.boot_root / "lpxelinux.0").write_bytes(os.urandom(40 * 1024))
    (layout.boot_root / "bootx64.efi").write_bytes(os.urandom(60 * 1024))
    (images / "vmlinuz").write_bytes(os.urandom(KERNEL_BYTES))
    (images / "initrd.img").write_bytes(os.urandom(INITRD_BYTES))


async def call(client: httpx.AsyncClient, method: str, path: str, body: Any = None, ok: tuple[int, ...] = ()) -> Any:
    response = await client.request(method, f"/api/v1{path}", json=body)
    if response.is_success or response.status_code in ok:
        return response.json() if response.content else None
    raise StormError(f"{method} {path}: {response.status_code} {response.text[:300]}")


@contextlib.asynccontextmanager
async def storm_site(
    state_dir: Path,
    profiles: list[MachineProfile],
    options: MachineOptions,
    *,
    region_replicas: int = 2,
    racks: int = 1,
    postgres_settings: dict[str, str] | None = None,
    in_flight: int = 64,
    **stack_options: Any,
) -> AsyncIterator[StormSite]:
    """``stack_options``: further StackSettings fields (ports, say); the rest comes from METALBUS_STACK_*.
    ``racks`` > 1: the further racks run in namespaces of their own on the machines' segment (rack-2 at .4, …)."""
    layout = StackLayout(state_dir)
    write_boot_files(layout)
    subnet = IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(32) * 8}.0/21")
    hosts = list(subnet.hosts())
    further = [f"{hosts[2 + number]}/{subnet.prefixlen}" for number in range(1, racks)]
    async with fleet_link(None, f"{hosts[1]}/{subnet.prefixlen}", further) as link:
        extra_racks = [
            ExtraRack(rack_id=f"rack-{number}", namespace=str(host.namespace.name), dhcp_interfaces=[host.interface])
            for number, host in enumerate(link.rack_hosts, start=2)
        ]
        settings = StackSettings(
            state_dir=state_dir,
            dhcp_port=67,
            dhcp_interfaces=[link.rack_interface],
            region_replicas=region_replicas,
            postgres_settings=postgres_settings or {},
            extra_racks=extra_racks,
            **stack_options,
        )
        await bring_up(settings)
        try:
            key = (await request_key(stack_connect_options(state_dir), f"storm-{secrets.token_hex(4)}")).key
            async with (
                httpx.AsyncClient(
                    base_url=f"http://{settings.host}:{settings.api_port}",
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=120,
                    limits=httpx.Limits(max_connections=in_flight),
                ) as client,
                fleet_network(
                    link.namespace,
                    link.machine_interface,
                    tftp_port=settings.tftp_port,
                    syslog_port=settings.syslog_port,
                ) as network,
            ):
                await _serve_subnet(client, subnet)
                await _register_images(client)
                bmcs = SimulatedBmcs(profiles, network, options, BmcCredentials("admin", secrets.token_urlsafe(12)))
                await bmcs.start(IPv4Interface(f"{hosts[2]}/{subnet.prefixlen}"))
                try:
                    yield StormSite(
                        settings,
                        client,
                        network,
                        bmcs,
                        profiles,
                        subnet,
                        link.rack_interface,
                        link.namespace,
                        link.rack_hosts,
                    )
                finally:
                    await bmcs.close()
        finally:
            with contextlib.suppress(StackError):
                bring_down(state_dir)


async def _serve_subnet(client: httpx.AsyncClient, subnet: IPv4Network) -> None:
    hosts = list(subnet.hosts())
    body = {
        "cidr": str(subnet), "gateway": str(hosts[0]), "dns_servers": [str(hosts[1])],
        "dynamic_start": str(hosts[9]), "dynamic_end": str(hosts[-2]), "lease_time_s": 3600,
    }  # fmt: skip
    await call(client, "POST", "/subnets", body)


async def _register_images(client: httpx.AsyncClient) -> None:
    for architecture in ("amd64/bios", "amd64/uefi"):
        resource = {
            "architecture": architecture, "purpose": "commissioning", "kernel": f"{IMAGE_DIR}/vmlinuz",
            "initrd": f"{IMAGE_DIR}/initrd.img", "kernel_params": "console=ttyS0",
        }  # fmt: skip
        await call(client, "PUT", "/boot-resources", resource)


async def create_machines(site: StormSite) -> list[str]:
    async def create(profile: MachineProfile) -> str:
        power = site.bmcs.machine_power(profile)
        body = {
            "hostname": profile.hostname, "architecture": profile.architecture.value, "boot_mac": profile.boot_mac,
            "power_type": power.power_type.value, "power_parameters": power.parameters,
            "power_secrets": power.secrets,
        }  # fmt: skip
        return str((await call(site.client, "POST", "/machines", body))["system_id"])

    return await bounded_map(create, site.profiles, CREATE_IN_FLIGHT)


async def commission_storm(
    site: StormSite,
    system_ids: list[str],
    *,
    deadline_s: float,
    in_flight: int = 64,
    started: float | None = None,
) -> StormRun:
    """Every commission call at once; returns when no machine is NEW or COMMISSIONING any more (or at the
    deadline). A call that fails with 5xx or a lost connection is sent again with the same idempotency key."""
    run = StormRun(len(system_ids), list(system_ids))
    began = time.monotonic() if started is None else started

    async def commission(system_id: str) -> None:
        sent = time.monotonic()
        key = {"Idempotency-Key": f"storm-commission-{system_id}"}
        while time.monotonic() - began < deadline_s:
            try:
                response = await site.client.post(f"/api/v1/machines/{system_id}/commission", json={}, headers=key)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code < 500:
                break
            run.commission_retries += 1
            await asyncio.sleep(CALL_RETRY_S)
        run.commission_call_s.append(time.monotonic() - sent)
        run.commission_done_at.append(time.monotonic() - began)

    calls = asyncio.create_task(bounded_map(commission, system_ids, in_flight))
    try:
        while time.monotonic() - began < deadline_s:
            await asyncio.sleep(POLL_S)
            with contextlib.suppress(StormError, httpx.TransportError):
                run.statuses = await status_counts(site.client)
                run.ready_at.extend([time.monotonic() - began] * (run.ready - len(run.ready_at)))
            if calls.done() and sum(run.statuses.get(s, 0) for s in SETTLED) >= len(system_ids):
                break
    finally:
        if not calls.done():
            calls.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await calls
    if run.ready == len(system_ids):
        run.ready_after_s = run.ready_at[-1] if run.ready_at else time.monotonic() - began
    return run


async def status_counts(client: httpx.AsyncClient) -> dict[str, int]:
    counts = {}
    for status in ("new", "commissioning", "ready", "failed_commissioning"):
        counts[status] = int((await call(client, "GET", f"/machines?status={status}&limit=1"))["total"])
    return counts


async def storm_checks(site: StormSite, system_ids: list[str]) -> StormChecks:
    """What the region stored against what the machines did. The region may be done before a machine is: one whose
    last answer was lost (a restart mid-request) is still retrying it, so the machines get ``MACHINES_SETTLE_S``."""
    await site.bmcs.wait_until_every_machine_booted(MACHINES_SETTLE_S)
    outcomes = [site.bmcs.latest_outcome(profile) for profile in site.profiles]

    async def stored(system_id: str) -> HardwareInventory | None:
        answer = await call(site.client, "GET", f"/machines/{system_id}/inventory", ok=(404,))
        return HardwareInventory.model_validate(answer) if answer and "cpu_count" in answer else None

    inventories = await bounded_map(stored, system_ids, CREATE_IN_FLIGHT)
    reported = {o.profile.boot_mac: o.reported for o in outcomes if o.reported is not None}
    stored_by_mac = {p.boot_mac: i for p, i in zip(site.profiles, inventories, strict=True) if i is not None}
    never_reported = {p.boot_mac for p in site.profiles if p.boot_mac not in reported}
    signalled = {o.profile.boot_mac for o in outcomes if o.result is MachineResult.READY}
    lost = sorted(mac for mac in signalled if mac not in stored_by_mac)
    mismatches = sorted(set(inventory_mismatches(reported, stored_by_mac)) | never_reported)
    duplicates, by_rack = await duplicate_leases(site.state_dir), await leases_by_rack(site.state_dir)
    return StormChecks(outcomes, mismatches, lost, duplicates, by_rack, site.bmcs.disk_boots())


async def database(state_dir: Path) -> asyncpg.Connection:
    _, _, cluster, _ = recorded_stack(state_dir)
    return await asyncpg.connect(cluster.dsn(), timeout=10)


async def duplicate_leases(state_dir: Path) -> int:
    """Addresses held by more than one machine's active (offered or bound) lease: must be 0."""
    connection = await database(state_dir)
    try:
        query = (
            "SELECT count(*) FROM (SELECT ip FROM leases WHERE state IN ('offered', 'bound')"
            " GROUP BY ip HAVING count(DISTINCT mac) > 1) AS shared"
        )
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


async def leases_by_rack(state_dir: Path) -> dict[str, int]:
    """Rack id → machines (MACs) whose latest lease that rack answered last."""
    connection = await database(state_dir)
    try:
        query = (
            "SELECT rack_id, count(*) AS machines FROM (SELECT DISTINCT ON (mac) mac, rack_id FROM leases"
            " ORDER BY mac, updated_at DESC) AS latest GROUP BY rack_id ORDER BY rack_id"
        )
        return {str(row["rack_id"]): int(row["machines"]) for row in await connection.fetch(query)}
    finally:
        await connection.close()
