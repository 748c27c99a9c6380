"""Small boot storms through the whole embedded stack, alone and with a part failing mid-way: every machine ends
READY, no address is leased to two machines, no result is lost.

Each test starts the stack as `metalbus up` does (nats-server, PostgreSQL, two region replicas, the api, one rack
whose rack-dhcp answers on port 67 of a veth made for the test — and for the rack drill a second rack in a
namespace of its own on the same segment), sixteen fleet machines with simulated Redfish BMCs behind that veth,
and commissions them all at once through the REST API: the region powers each on through rack-power, each DHCPs,
TFTPs, fetches its images over HTTP, reads its metadata and posts its inventory through the rack. The firmware
waits 1.5 s before DHCP and the fault comes at 2 s, so it lands while machines boot; after a failed boot it
boots from the network again (at most 3 boots), with TFTP waits a quarter of pxelinux's. The bigger versions are
bench/fleet.py and bench/drills.py.
"""

import os
import shutil
from pathlib import Path

import pytest

from metalbus.contracts.dns import DEFAULT_INTERNAL_DOMAIN
from metalbus.fleet.dhcp_client import RetransmitPolicy
from metalbus.fleet.drills import Drill, run_drill
from metalbus.fleet.machine import MachineOptions, MachineResult
from metalbus.fleet.profiles import fleet_profiles
from metalbus.fleet.storm import storm_site
from metalbus.fleet.tftp_fetch import PXELINUX_TFTP_TIMEOUTS_S
from metalbus_region.dns_zones import subnet_name
from tests.conftest import free_port
from tests.integration.test_rack_proxy_dns import resolved
from tests.integration.test_region import eventually

MACHINES = 16
FAULT_AFTER_S = 2.0
OUTAGE_S = 2.0
DEADLINE_S = 120.0
ZONE_REFRESH_S = 5.0
FIRMWARE = MachineOptions(
    dhcp_policy=RetransmitPolicy(scale=0.5),
    firmware_s=1.5,
    tftp_timeouts_s=tuple(wait / 4 for wait in PXELINUX_TFTP_TIMEOUTS_S),
    boot_attempts=3,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces, veth and port 67 need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables (nft) is not installed"),
]


def private_ports() -> dict[str, int]:
    names = ("nats_port", "nats_monitor_port", "postgres_port", "api_port", "tftp_port", "rack_http_port")
    names += ("apt_proxy_port", "dns_port", "syslog_port")
    return {name: free_port() for name in names} | {"metrics_port_base": 0, "heartbeat_interval_s": 1.0}


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    return tmp_path / "state"


@pytest.mark.parametrize(
    "drill",
    list(Drill),
)
async def test_a_boot_storm_ends_with_every_machine_ready_and_nothing_lost_whatever_fails_mid_way(
    drill: Drill, state_dir: Path
) -> None:
    profiles = fleet_profiles(40 + list(Drill).index(drill), MACHINES)
    async with storm_site(state_dir, profiles, FIRMWARE, racks=drill.racks, **private_ports()) as site:
        result = await run_drill(site, drill, fault_after_s=FAULT_AFTER_S, outage_s=OUTAGE_S, deadline_s=DEADLINE_S)
        # the subnet's internal name resolves to the racks serving it: rack-1 (.2) alone, rack-2 gone after its
        # kill; rack-proxy refreshes its zone every 5 s (a NATS outage may have left it a zone without the rack)
        rack_one = str(list(site.subnet.hosts())[1])
        name = subnet_name(site.subnet, DEFAULT_INTERNAL_DOMAIN)
        subnet_racks = await eventually(
            lambda: resolved(site.settings.dns_port, name),
            lambda found: found == [rack_one],
            timeout=ZONE_REFRESH_S * 2,
        )

    ready_before_fault = sum(1 for moment in result.run.ready_at if moment <= result.fault_at_s)
    problems = [(o.profile.boot_mac, o.result, o.step, o.error) for o in result.checks.outcomes if o.result != "ready"]
    assert ready_before_fault < MACHINES, "the fault came after the storm: it tested nothing"
    assert result.run.statuses.get("ready") == MACHINES, (result.run.statuses, problems)
    assert [o.result for o in result.checks.outcomes] == [MachineResult.READY] * MACHINES, problems
    assert result.checks.duplicate_leases == 0
    assert result.checks.lost_results == []
    assert result.checks.mismatches == []
    assert result.zero_loss
    if drill is Drill.KILL_RACK:  # the rack killed had served machines: it still holds leases, or some booted again
        rebooted = [o.profile.boot_mac for o in result.checks.outcomes if o.failed_boots]
        assert "rack-2" in result.checks.leases_by_rack or rebooted, result.checks.leases_by_rack
    assert subnet_racks == [rack_one]
