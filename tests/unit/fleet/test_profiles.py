"""Hardware profiles are deterministic, distinct per machine, and what the commissioning script would report."""

from metalbus.contracts.common import Architecture
from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.commissioning import inventory_output
from metalbus.fleet.profiles import fleet_profiles, machine_mac, machine_profile


def test_the_same_seed_gives_the_same_fleet() -> None:
    assert fleet_profiles(7, 50) == fleet_profiles(7, 50)


def test_another_seed_gives_other_machines() -> None:
    first, second = fleet_profiles(7, 20), fleet_profiles(8, 20)
    assert {p.boot_mac for p in first}.isdisjoint({p.boot_mac for p in second})
    assert [p.inventory for p in first] != [p.inventory for p in second]


def test_every_nic_of_a_large_fleet_has_its_own_mac() -> None:
    macs = [nic.mac for profile in fleet_profiles(3, 2000) for nic in profile.inventory.interfaces]
    assert len(macs) == len(set(macs))
    assert all(int(mac[:2], 16) & 0x02 for mac in macs)  # locally administered


def test_the_boot_nic_is_the_first_linked_interface_and_each_linked_nic_has_a_neighbour() -> None:
    for profile in fleet_profiles(5, 100):
        interfaces = profile.inventory.interfaces
        assert interfaces[0].mac == profile.boot_mac and interfaces[0].link_up
        linked = [nic.name for nic in interfaces if nic.link_up]
        assert [neighbour.interface for neighbour in profile.inventory.lldp_neighbours] == linked


def test_a_fleet_mixes_bios_and_efi_firmware() -> None:
    architectures = {profile.architecture for profile in fleet_profiles(1, 50)}
    assert architectures == {Architecture.AMD64_BIOS, Architecture.AMD64_UEFI}


def test_what_the_machine_prints_reads_back_as_its_inventory() -> None:
    profile = machine_profile(9, 4)
    assert HardwareInventory.model_validate_json(inventory_output(profile.inventory)) == profile.inventory


def test_macs_carry_seed_nic_and_index() -> None:
    assert machine_mac(0x1AB, 0x010203, 2) == "02:ab:02:01:02:03"
