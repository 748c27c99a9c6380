"""The lab's names, addresses and MACs, derived from its spec alone (pure: no I/O).

Layout: a network namespace ``mb-lab-<id>`` holds a bridge for the provisioning subnet, one tap per VM and the
lab end of a veth pair whose other end (the rack's interface, address ``.2``) stays in the root namespace, where
the stack's rack services run. Each VM's BMC (an ``ipmi_sim``) listens inside the namespace on its own address
of the provisioning subnet (``.10`` + index, UDP 623), so a rack with the ``.2`` interface reaches every BMC.
The VMs' DHCP range is ``.64`` to the last address of the subnet.
"""

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network

LAB_ID_PATTERN = r"^[a-z0-9]{1,6}$"
DEFAULT_SUBNET = IPv4Network("10.250.0.0/24")
RACK_HOST = 2
FIRST_BMC_HOST = 10
FIRST_DYNAMIC_HOST = 64  # the VMs' DHCP range: from here to the last address before broadcast
IPMI_PORT = 623
FIRST_BMC_SERIAL_PORT = 9002  # on the namespace's loopback: where each ipmi_sim waits for its qemu
MAX_VMS = 40


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class NicModel(StrEnum):
    E1000 = "e1000"
    VIRTIO = "virtio-net-pci"


class Accelerator(StrEnum):
    TCG = "tcg"
    KVM = "kvm"


@dataclass(frozen=True)
class LabSpec:
    """What to build: ``vms`` machines, the last ``uefi`` of them with UEFI firmware."""

    lab_id: str
    vms: int = 2
    uefi: int = 0
    subnet: IPv4Network = DEFAULT_SUBNET
    memory_mib: int = 512
    cpus: int = 1
    disk_mib: int = 1024
    nic: NicModel = NicModel.E1000
    accel: Accelerator = Accelerator.TCG

    def __post_init__(self) -> None:
        if not re.match(LAB_ID_PATTERN, self.lab_id):
            raise ValueError(f"lab id {self.lab_id!r} must be 1-6 lowercase letters or digits")
        if not 1 <= self.vms <= MAX_VMS or not 0 <= self.uefi <= self.vms:
            raise ValueError(f"need 1..{MAX_VMS} VMs and at most that many UEFI ones (got {self.vms}, {self.uefi})")
        if self.subnet.prefixlen > 25:
            raise ValueError(f"subnet {self.subnet} is too small for a lab (at most /25)")


@dataclass(frozen=True)
class VmPlan:
    """One VM and its BMC: everything that names or addresses them."""

    index: int
    name: str
    mac: str
    tap: str
    firmware: Firmware
    bmc_address: IPv4Address
    bmc_port: int
    bmc_serial_port: int


@dataclass(frozen=True)
class LabPlan:
    spec: LabSpec
    namespace: str
    bridge: str
    rack_interface: str
    lab_veth: str
    rack_address: IPv4Address
    vms: tuple[VmPlan, ...]

    @property
    def switch_name(self) -> str:
        """The LLDP system name of the lab's "switch" (the host side of the taps)."""
        return f"metalbus-lab-{self.spec.lab_id}"

    @property
    def dynamic_range(self) -> tuple[IPv4Address, IPv4Address]:
        """Where the region's subnet should lease VM addresses: clear of the rack (.2) and the BMCs (.10 up)."""
        subnet = self.spec.subnet
        return subnet.network_address + FIRST_DYNAMIC_HOST, subnet.broadcast_address - 1

    @property
    def rack_interface_cidr(self) -> str:
        return f"{self.rack_address}/{self.spec.subnet.prefixlen}"


def plan_lab(spec: LabSpec) -> LabPlan:
    prefix = f"mbl{spec.lab_id}"
    return LabPlan(
        spec=spec,
        namespace=f"mb-lab-{spec.lab_id}",
        bridge=f"{prefix}b",
        rack_interface=f"{prefix}r",
        lab_veth=f"{prefix}n",
        rack_address=spec.subnet.network_address + RACK_HOST,
        vms=tuple(plan_vm(spec, index) for index in range(spec.vms)),
    )


def plan_vm(spec: LabSpec, index: int) -> VmPlan:
    firmware = Firmware.UEFI if index >= spec.vms - spec.uefi else Firmware.BIOS
    return VmPlan(
        index=index,
        name=f"lab{spec.lab_id}-vm{index}",
        mac=vm_mac(spec.lab_id, index),
        tap=f"mbl{spec.lab_id}t{index}",
        firmware=firmware,
        bmc_address=spec.subnet.network_address + FIRST_BMC_HOST + index,
        bmc_port=IPMI_PORT,
        bmc_serial_port=FIRST_BMC_SERIAL_PORT + index,
    )


def vm_mac(lab_id: str, index: int) -> str:
    """A locally administered qemu-range MAC, stable for (lab id, index) and distinct between labs' VMs."""
    digest = hashlib.sha256(lab_id.encode()).digest()
    return f"52:54:00:{digest[0]:02x}:{digest[1]:02x}:{index:02x}"
