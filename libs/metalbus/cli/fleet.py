"""`metalbus fleet`: N virtual machines, made from a seed, commissioned to READY through the real rack services.

The machines live on an interface inside a network namespace (``--namespace``/``--interface``), or on a veth pair
the command makes (``--create-veth``: the rack's end, with ``--rack-address``, stays in this namespace and must be
one rack-dhcp serves). The region is reached over NATS (``METALBUS_FLEET_NATS_URL``, ``_NATS_USER``,
``_NATS_PASSWORD`` or the ``[fleet]`` table of METALBUS_CONFIG). With ``--bmc-address`` every machine gets a
simulated Redfish BMC there and the region powers them on through the rack whose rack-power reaches that address;
without it the command presses the power buttons itself (power type manual). Prints each machine as it ends and a
final table:
READY / FAILED / stuck, per-step latency p50/p95, inventory mismatches. Exits 0 when every machine is READY with
exactly the inventory it reported.
"""

import asyncio
import contextlib
import dataclasses
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Interface
from typing import Annotated

import typer

from metalbus.bus import Bus
from metalbus.contracts.errors import MetalbusError
from metalbus.fleet.bmc import BmcCredentials, SimulatedBmcs
from metalbus.fleet.campaign import CampaignResult, commission_fleet, commission_fleet_through_bmcs
from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.machine import MachineOptions, MachineOutcome, MachineResult
from metalbus.fleet.network import FleetNetwork, fleet_network
from metalbus.fleet.profiles import MachineProfile, fleet_profiles
from metalbus.fleet.report import render_table
from metalbus.fleet.settings import FleetSettings
from metalbus.fleet.veth import fleet_link
from metalbus.netns import NamespaceError, NetworkNamespace
from metalbus.settings import load_settings

NATS_WAIT_S = 10.0


@dataclass(frozen=True)
class FleetOptions:
    count: int
    seed: int
    namespace: str | None
    interface: str | None
    create_veth: bool
    rack_interface: str | None
    rack_address: str
    tftp_port: int
    syslog_port: int | None
    concurrency: int
    deadline_s: float
    dhcp_scale: float
    bmc_address: IPv4Interface | None = None
    firmware_s: float = 0.0


def fleet(
    count: Annotated[int, typer.Option("--count", "-n", help="How many virtual machines.", min=1, max=1 << 24)] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the hardware profiles and MACs.")] = 1,
    namespace: Annotated[str | None, typer.Option(help="Network namespace of --interface.")] = None,
    interface: Annotated[str | None, typer.Option(help="Interface the machines use (in --namespace).")] = None,
    create_veth: Annotated[bool, typer.Option("--create-veth", help="Make a namespace and veth pair.")] = False,
    rack_interface: Annotated[str | None, typer.Option(help="With --create-veth: the rack's end's name.")] = None,
    rack_address: Annotated[str, typer.Option(help="With --create-veth: the rack's end's address.")] = "10.99.0.2/24",
    tftp_port: Annotated[int, typer.Option(help="The rack's TFTP port.")] = 69,
    syslog_port: Annotated[int | None, typer.Option(help="The rack's syslog port (0: send none).")] = 514,
    concurrency: Annotated[int, typer.Option(help="Machines booting at once.", min=1)] = 100,
    deadline: Annotated[float, typer.Option(help="Seconds before unfinished machines count as stuck.")] = 300,
    dhcp_scale: Annotated[float, typer.Option(help="Scale of firmware's DHCP waits (4 s, 8 s, …).", min=0.01)] = 1.0,
    bmc_address: Annotated[
        str | None, typer.Option(help="Serve simulated Redfish BMCs on this address/prefix; the region powers on.")
    ] = None,
    firmware_s: Annotated[float, typer.Option(help="Seconds of firmware self-test before DHCP.", min=0)] = 0.0,
) -> None:
    """Commission COUNT virtual machines through the rack services and the region; print the fleet table."""
    if not create_veth and interface is None:
        raise typer.BadParameter("give --interface (and --namespace), or --create-veth")
    try:
        bmc_interface = IPv4Interface(bmc_address) if bmc_address else None
    except ValueError as error:
        raise typer.BadParameter(f"--bmc-address: {error}") from None
    options = FleetOptions(
        count, seed, namespace, interface, create_veth, rack_interface, rack_address, tftp_port,
        syslog_port or None, concurrency, deadline, dhcp_scale, bmc_interface, firmware_s,
    )  # fmt: skip
    try:
        result = asyncio.run(run(options, load_settings(FleetSettings)))
    except (NamespaceError, MetalbusError, OSError) as error:
        typer.echo(f"metalbus: fleet failed: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render_table(result.run.outcomes, result.run.elapsed_s, result.mismatches))
    if not result.all_ready:
        raise typer.Exit(1)


async def run(options: FleetOptions, settings: FleetSettings) -> CampaignResult:
    profiles = fleet_profiles(options.seed, options.count)
    machine_options = MachineOptions(
        dhcp_policy=RetransmitPolicy(scale=options.dhcp_scale), firmware_s=options.firmware_s
    )
    connect = dataclasses.replace(settings.connect_options("metalbus-fleet"), initial_connect_deadline_s=NATS_WAIT_S)
    bus = await Bus.connect(connect)
    try:
        async with (
            machines_interface(options) as (namespace, interface),
            fleet_network(
                namespace, interface, tftp_port=options.tftp_port, syslog_port=options.syslog_port
            ) as network,
        ):
            if options.bmc_address is not None:
                return await through_bmcs(bus, network, profiles, machine_options, options)
            return await commission_fleet(
                bus,
                network,
                profiles,
                machine_options,
                concurrency=options.concurrency,
                deadline_s=options.deadline_s,
                on_outcome=ProgressPrinter(options.count),
            )
    finally:
        await bus.close()


async def through_bmcs(
    bus: Bus,
    network: FleetNetwork,
    profiles: list[MachineProfile],
    machine_options: MachineOptions,
    options: FleetOptions,
) -> CampaignResult:
    assert options.bmc_address is not None
    credentials = BmcCredentials("admin", secrets.token_urlsafe(16))
    bmcs = SimulatedBmcs(profiles, network, machine_options, credentials, on_outcome=ProgressPrinter(options.count))
    await bmcs.start(options.bmc_address)
    typer.echo(f"fleet: {len(profiles)} simulated Redfish BMCs on http://{bmcs.address}:{bmcs.port}")
    try:
        return await commission_fleet_through_bmcs(bus, bmcs, profiles, deadline_s=options.deadline_s)
    finally:
        await bmcs.close()


@contextlib.asynccontextmanager
async def machines_interface(options: FleetOptions) -> AsyncIterator[tuple[NetworkNamespace, str]]:
    if not options.create_veth:
        yield NetworkNamespace(options.namespace), options.interface or ""
        return
    async with fleet_link(options.rack_interface, options.rack_address) as link:
        typer.echo(
            f"fleet: machines on {link.machine_interface} in {link.namespace.name}, rack on {link.rack_interface}"
        )
        yield link.namespace, link.machine_interface


@dataclass
class ProgressPrinter:
    total: int
    done: int = 0

    def __call__(self, outcome: MachineOutcome) -> None:
        self.done += 1
        detail = f" ({outcome.step}: {outcome.error})" if outcome.result is not MachineResult.READY else ""
        typer.echo(f"[{self.done}/{self.total}] {outcome.profile.hostname} {outcome.profile.boot_mac} "
                   f"{outcome.address or '-'} {outcome.result.value}{detail}")  # fmt: skip
