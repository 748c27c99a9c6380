"""The fleet table's numbers: nearest-rank percentiles, steps counted only where they happened, mismatches."""

from metalbus.fleet.machine import MachineOutcome, MachineResult
from metalbus.fleet.profiles import machine_profile
from metalbus.fleet.report import inventory_mismatches, percentile, render_table, step_latencies


def test_percentiles_are_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 1.0)) == (50.0, 95.0, 100.0)
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0], 0.95) == 3.0


def test_step_latencies_count_only_machines_that_did_the_step() -> None:
    done = MachineOutcome(machine_profile(1, 0), MachineResult.READY, timings={"dhcp": 0.2, "tftp": 0.1})
    stuck = MachineOutcome(machine_profile(1, 1), MachineResult.STUCK, step="tftp", timings={"dhcp": 0.4})
    latencies = {latency.step: latency for latency in step_latencies([done, stuck])}
    assert (latencies["dhcp"].count, latencies["dhcp"].max_s) == (2, 0.4)
    assert (latencies["tftp"].count, latencies["signal"].count) == (1, 0)
    table = render_table([done, stuck], 1.0, [])
    assert "READY 1, FAILED 0, STUCK 1" in table and "stuck at tftp" in table


def test_a_missing_or_different_stored_inventory_is_a_mismatch() -> None:
    first, second, third = (machine_profile(2, index) for index in range(3))
    reported = {p.boot_mac: p.inventory for p in (first, second, third)}
    stored = {first.boot_mac: first.inventory, second.boot_mac: third.inventory}
    assert inventory_mismatches(reported, stored) == sorted([second.boot_mac, third.boot_mac])
