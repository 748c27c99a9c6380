"""Virtual machines with simulated Redfish BMCs are powered on by the region through the rack, as real ones are.

The whole commissioning sequence with nothing pressed by hand: the commission call makes the region pick the rack
whose rack-power reaches the BMC network, rack-power's Redfish driver sets the one-time PXE override and resets
the system On, the simulated BMC boots that machine from the network (DHCP from rack-dhcp, TFTP and HTTP from
rack-tftp, metadata through its proxy), the commissioning environment posts its inventory and powers itself off.
An abort reaches the BMC the same way and powers a machine off mid-boot.
"""

import asyncio
from collections.abc import AsyncIterator
from ipaddress import IPv4Interface

import pytest

from metalbus.bus import Bus
from metalbus.cli.fleet import FleetOptions
from metalbus.cli.fleet import run as run_fleet_command
from metalbus.contracts.machines import MachineAction, MachineActionRequest, MachineStatus
from metalbus.contracts.racks import RackListQuery, RackServiceKind
from metalbus.fleet.bmc import BmcCredentials, SimulatedBmcs, system_key
from metalbus.fleet.campaign import commission_fleet_through_bmcs
from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.enrolment import MachinePower, commission_machines, create_machines, machine_states
from metalbus.fleet.machine import STEPS, MachineOptions, MachineResult
from metalbus.fleet.network import fleet_network
from metalbus.fleet.profiles import MachineProfile, fleet_profiles
from metalbus.fleet.report import render_table
from metalbus.fleet.settings import FleetSettings
from metalbus.netns import NetworkNamespace
from metalbus.subjects import MACHINE_ACTION, RACK_LIST
from metalbus_rack_power.service import run_rack_power
from metalbus_rack_power.settings import RackPowerSettings
from tests.conftest import NatsServer
from tests.integration.test_fleet import RACK_ID, boot_root, rack_tftp_port, running
from tests.integration.test_rack_dhcp_clients import Link, link
from tests.integration.test_region import eventually

__all__ = ["boot_root", "link", "rack_tftp_port"]  # fixtures

pytestmark = pytest.mark.slow

SEED = 23
CREDENTIALS = BmcCredentials("admin", "fleet-bmc-secret")
FAST_FIRMWARE = MachineOptions(dhcp_policy=RetransmitPolicy(scale=0.25), metadata_retry_scale=0.2)


@pytest.fixture
async def rack_power(nats_server: NatsServer, bus: Bus, link: Link, rack_tftp_port: int) -> AsyncIterator[None]:
    """rack-power of the same rack, reaching the link's subnet, heard by the region as healthy."""
    settings = RackPowerSettings(
        nats_url=nats_server.url,
        rack_id=RACK_ID,
        interfaces=[IPv4Interface(f"{link.ip(2)}/24")],
        heartbeat_interval_s=1.0,
        poll_interval_s=3600,
    )
    stop = asyncio.Event()
    async with running(run_rack_power(settings, stop), stop):

        async def power_service_healthy() -> bool:
            racks = (await bus.request(RACK_LIST, RackListQuery(), timeout=5)).racks
            services = [s for rack in racks if rack.rack_id == RACK_ID for s in rack.services]
            return any(s.service is RackServiceKind.POWER and s.healthy for s in services)

        await eventually(power_service_healthy, bool, timeout=20)
        yield


@pytest.fixture
async def bmcs_of(link: Link, rack_tftp_port: int) -> AsyncIterator[dict[str, object]]:
    """A place for the test's fleet network and BMCs; both closed after the test, whatever happened."""
    made: dict[str, object] = {}
    yield made
    bmcs = made.get("bmcs")
    if isinstance(bmcs, SimulatedBmcs):
        await bmcs.close()


async def test_the_region_powers_virtual_machines_on_through_the_rack_and_each_commissions_to_ready(
    bus: Bus, link: Link, rack_tftp_port: int, rack_power: None
) -> None:
    profiles = fleet_profiles(SEED, 6)
    namespace = NetworkNamespace(link.namespace)
    async with fleet_network(namespace, link.client_interface, tftp_port=rack_tftp_port, syslog_port=None) as net:
        bmcs = SimulatedBmcs(profiles, net, FAST_FIRMWARE, CREDENTIALS)
        await bmcs.start(IPv4Interface(f"{link.ip(3)}/24"))
        try:
            result = await commission_fleet_through_bmcs(bus, bmcs, profiles, deadline_s=60)
            systems = [bmcs.systems[system_key(profile)] for profile in profiles]
        finally:
            await bmcs.close()

    print(render_table(result.run.outcomes, result.run.elapsed_s, result.mismatches))
    assert [(o.result, o.error) for o in result.run.outcomes] == [(MachineResult.READY, None)] * 6
    assert result.statuses == {profile.boot_mac: MachineStatus.READY for profile in profiles}
    assert result.mismatches == []
    # Each BMC was used as a real one: one power-on, a network boot asked for (and used up), off at the end.
    assert [(s.power_ons, s.disk_boots, s.pxe_once, s.powered) for s in systems] == [(1, 0, False, False)] * 6
    assert bmcs.refused_requests == 0


async def test_aborting_a_machine_in_its_firmware_powers_it_off_through_the_rack(
    bus: Bus, link: Link, rack_tftp_port: int, rack_power: None, bmcs_of: dict[str, object]
) -> None:
    profiles = fleet_profiles(SEED + 1, 1)
    slow_firmware = MachineOptions(firmware_s=120)
    namespace = NetworkNamespace(link.namespace)
    async with fleet_network(namespace, link.client_interface, tftp_port=rack_tftp_port, syslog_port=None) as net:
        bmcs = bmcs_of["bmcs"] = SimulatedBmcs(profiles, net, slow_firmware, CREDENTIALS)
        await bmcs.start(IPv4Interface(f"{link.ip(3)}/24"))
        system = bmcs.systems[system_key(profiles[0])]
        created = await create_machines(bus, profiles, power_of=bmcs.machine_power)
        commissioning = await commission_machines(bus, created)
        assert commissioning[0].status is MachineStatus.COMMISSIONING
        assert system.powered and system.machine is not None and system.machine.outcome.step == "firmware"

        abort = MachineActionRequest(system_id=created[0].system_id, action=MachineAction.ABORT)
        aborted = await bus.request(MACHINE_ACTION, abort, timeout=15)

        assert aborted.status is MachineStatus.NEW
        assert not system.powered
        assert [(o.result, o.step) for o in system.outcomes] == [(MachineResult.STUCK, "firmware")]
        assert (await machine_states(bus, [created[0].system_id]))[0].status is MachineStatus.NEW


async def test_a_bmc_refusing_the_credentials_fails_commissioning_and_boots_nothing(
    bus: Bus, link: Link, rack_tftp_port: int, rack_power: None, bmcs_of: dict[str, object]
) -> None:
    profiles = fleet_profiles(SEED + 2, 1)
    namespace = NetworkNamespace(link.namespace)
    async with fleet_network(namespace, link.client_interface, tftp_port=rack_tftp_port, syslog_port=None) as net:
        bmcs = bmcs_of["bmcs"] = SimulatedBmcs(profiles, net, FAST_FIRMWARE, CREDENTIALS)
        await bmcs.start(IPv4Interface(f"{link.ip(3)}/24"))

        def wrong_password(profile: MachineProfile) -> MachinePower:
            power = bmcs.machine_power(profile)
            return MachinePower(power.power_type, power.parameters, {"password": "not-the-password"})

        created = await create_machines(bus, profiles, power_of=wrong_password)
        after = await commission_machines(bus, created)

        assert after[0].status is MachineStatus.FAILED_COMMISSIONING
        assert "refused the credentials" in (after[0].status_reason or "")
        assert bmcs.refused_requests >= 1
        assert bmcs.systems[system_key(profiles[0])].power_ons == 0


async def test_the_fleet_command_with_a_bmc_address_has_the_region_power_its_machines(
    nats_server: NatsServer, link: Link, rack_tftp_port: int, rack_power: None
) -> None:
    options = FleetOptions(
        count=3, seed=SEED + 3, namespace=link.namespace, interface=link.client_interface, create_veth=False,
        rack_interface=None, rack_address="", tftp_port=rack_tftp_port, syslog_port=None, concurrency=3,
        deadline_s=60, dhcp_scale=0.25, bmc_address=IPv4Interface(f"{link.ip(3)}/24"),
    )  # fmt: skip
    result = await run_fleet_command(options, FleetSettings(nats_url=nats_server.url))

    assert result.all_ready
    assert result.statuses == {profile.boot_mac: MachineStatus.READY for profile in fleet_profiles(SEED + 3, 3)}
    assert [outcome.timings.keys() for outcome in result.run.outcomes] == [{*STEPS}] * 3
