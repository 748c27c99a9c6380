"""Each VM's files (blank disk, UEFI variables) and its qemu command line, as the VM's BMC starts it.

qemu runs without display or default devices; the serial console goes to ``serial.log``; it boots from its NIC
(``-boot n``), plugged into its tap with a fixed MAC, and talks to its BMC (the lab's ``ipmi_sim``) through
``ipmi-bmc-extern`` over a socket on the namespace's loopback, with a KCS interface visible to the guest.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from metalbus.lab.topology import Accelerator, Firmware, LabSpec, VmPlan

QEMU_BINARY = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
IPMI_RECONNECT_S = 10


@dataclass(frozen=True)
class VmFiles:
    """Where one VM keeps its state, under ``<lab dir>/<vm name>/``."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.raw"

    @property
    def uefi_variables(self) -> Path:
        return self.directory / "OVMF_VARS_4M.fd"

    @property
    def serial_log(self) -> Path:
        return self.directory / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def machine_pid(self) -> Path:
        """Written by the BMC's chassis control script: the running qemu's pid and start ticks."""
        return self.directory / "machine.pid"


def prepare_vm_files(files: VmFiles, vm: VmPlan, spec: LabSpec) -> None:
    """A sparse blank disk of ``disk_mib`` and, for UEFI, a private copy of OVMF's variable store."""
    files.directory.mkdir(parents=True, exist_ok=True)
    with files.disk.open("wb") as disk:
        disk.truncate(spec.disk_mib * 1024 * 1024)
    if vm.firmware is Firmware.UEFI:
        if not OVMF_CODE.exists():
            raise FileNotFoundError(f"{OVMF_CODE} is missing: install Debian's ovmf (scripts/setup.sh does)")
        shutil.copyfile(OVMF_VARS, files.uefi_variables)


def qemu_binary() -> str:
    found = shutil.which(QEMU_BINARY)
    if found is None:
        raise FileNotFoundError(f"{QEMU_BINARY} is missing: install Debian's qemu-system-x86")
    return found


def qemu_argv(vm: VmPlan, spec: LabSpec, files: VmFiles, binary: str) -> list[str]:
    return [
        binary,
        *("-name", vm.name, "-accel", accelerator(spec.accel), "-nodefaults", "-display", "none"),
        *("-m", str(spec.memory_mib), "-smp", str(spec.cpus)),
        *firmware_arguments(vm, files),
        *("-serial", f"file:{files.serial_log}"),
        *("-netdev", f"tap,id=net0,ifname={vm.tap},script=no,downscript=no"),
        *("-device", f"{spec.nic.value},netdev=net0,mac={vm.mac}"),
        *("-drive", f"if=none,id=disk0,format=raw,file={files.disk}"),
        *("-device", f"virtio-blk-pci,drive=disk0,serial={vm.name}"),
        *ipmi_arguments(vm),
        *("-boot", "n"),
    ]


def accelerator(choice: Accelerator) -> str:
    """kvm only when asked and /dev/kvm opens; tcg otherwise (KVM fails to boot on the project's machines)."""
    if choice is Accelerator.KVM and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg"


def firmware_arguments(vm: VmPlan, files: VmFiles) -> list[str]:
    if vm.firmware is Firmware.BIOS:
        return ["-machine", "pc"]
    return [
        *("-machine", "q35"),
        *("-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        *("-drive", f"if=pflash,format=raw,unit=1,file={files.uefi_variables}"),
    ]


def ipmi_arguments(vm: VmPlan) -> list[str]:
    socket = f"socket,id=ipmi0,host=127.0.0.1,port={vm.bmc_serial_port},reconnect={IPMI_RECONNECT_S}"
    return [
        *("-chardev", socket),
        *("-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0"),
        *("-device", "isa-ipmi-kcs,bmc=bmc0,irq=5"),
    ]
