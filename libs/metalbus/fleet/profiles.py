"""Deterministic hardware profiles of virtual machines: the same seed and index always give the same machine (pure).

A profile is what a machine is (boot MAC, firmware, hostname) and what its commissioning reports: the region's
``HardwareInventory`` exactly as the commissioning script would print it (CPU model/count/speed, memory in MiB,
disks with size/model/serial, NICs with MAC/link/speed, an LLDP neighbour per linked NIC). MACs are locally
administered (``02:``), carry a byte of the seed and the machine's index, so they are unique within a fleet and
differ between seeds.
"""

import random
from dataclasses import dataclass

from metalbus.contracts.common import Architecture
from metalbus.contracts.metadata import BlockDevice, HardwareInventory, LldpNeighbour, NetworkInterface

CPU_MODELS = (
    ("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", 2000),
    ("Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz", 2400),
    ("AMD EPYC 7543 32-Core Processor", 2800),
    ("AMD EPYC 9354 32-Core Processor", 3250),
)
THREAD_COUNTS = (8, 16, 32, 48, 64)
MEMORY_MIB = (16384, 32768, 65536, 131072, 262144)
DISK_MODELS = (
    ("SAMSUNG MZ7L3480", 480103981056),
    ("INTEL SSDPE2KX010T8", 1000204886016),
    ("ST4000NM0035", 4000787030016),
)
NIC_SPEEDS_MBPS = (1000, 10000, 25000)
UEFI_SHARE = 0.3
"""About this share of machines boot with EFI firmware (option 93 = 7), the rest with BIOS (option 93 = 0)."""


@dataclass(frozen=True)
class MachineProfile:
    """One virtual machine: its identity and the inventory its commissioning reports."""

    index: int
    hostname: str
    boot_mac: str
    architecture: Architecture
    inventory: HardwareInventory


def machine_mac(seed: int, index: int, nic: int = 0) -> str:
    """``02:<seed byte>:<nic>:<index, 3 bytes>``: unique per (seed byte, nic, index < 2**24)."""
    if not 0 <= index < 1 << 24:
        raise ValueError(f"machine index {index} out of range")
    octets = (0x02, seed & 0xFF, nic & 0xFF, (index >> 16) & 0xFF, (index >> 8) & 0xFF, index & 0xFF)
    return ":".join(f"{octet:02x}" for octet in octets)


def machine_profile(seed: int, index: int) -> MachineProfile:
    """The profile of machine ``index`` of the fleet made from ``seed``."""
    chance = random.Random(f"metalbus-fleet:{seed}:{index}")
    hostname = f"sim-{seed & 0xFFFF:04x}-{index:05d}"
    architecture = Architecture.AMD64_UEFI if chance.random() < UEFI_SHARE else Architecture.AMD64_BIOS
    cpu_model, cpu_speed_mhz = chance.choice(CPU_MODELS)
    interfaces = _interfaces(chance, seed, index)
    inventory = HardwareInventory(
        cpu_model=cpu_model,
        cpu_count=chance.choice(THREAD_COUNTS),
        cpu_speed_mhz=cpu_speed_mhz,
        memory_mib=chance.choice(MEMORY_MIB) - chance.randrange(0, 512),  # less what the kernel keeps
        block_devices=_disks(chance),
        interfaces=interfaces,
        lldp_neighbours=_neighbours(chance, interfaces, index),
    )
    return MachineProfile(index, hostname, interfaces[0].mac, architecture, inventory)


def fleet_profiles(seed: int, count: int) -> list[MachineProfile]:
    return [machine_profile(seed, index) for index in range(count)]


def _disks(chance: random.Random) -> list[BlockDevice]:
    disks = []
    for number in range(chance.randint(1, 3)):
        model, size_bytes = chance.choice(DISK_MODELS)
        serial = "".join(chance.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(12))
        disks.append(BlockDevice(name=f"sd{chr(ord('a') + number)}", size_bytes=size_bytes, model=model, serial=serial))
    return disks


def _interfaces(chance: random.Random, seed: int, index: int) -> list[NetworkInterface]:
    """The boot NIC (linked) first, then up to two more, the last possibly without a link."""
    count = chance.randint(1, 3)
    interfaces = []
    for nic in range(count):
        link_up = nic == 0 or chance.random() < 0.7
        interfaces.append(
            NetworkInterface(
                name=f"eth{nic}",
                mac=machine_mac(seed, index, nic),
                link_up=link_up,
                speed_mbps=chance.choice(NIC_SPEEDS_MBPS) if link_up else None,
            )
        )
    return interfaces


def _neighbours(chance: random.Random, interfaces: list[NetworkInterface], index: int) -> list[LldpNeighbour]:
    """The top-of-rack switch port each linked NIC is cabled to."""
    switch = index // 48
    return [
        LldpNeighbour(
            interface=interface.name,
            chassis_id=f"aa:bb:cc:00:{switch >> 8 & 0xFF:02x}:{switch & 0xFF:02x}",
            port_id=f"ge-0/{nic}/{index % 48}",
            system_name=f"tor-{switch}-{chance.choice('ab')}",
        )
        for nic, interface in enumerate(interfaces)
        if interface.link_up
    ]
