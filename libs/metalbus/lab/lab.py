"""Bring a lab up and down: network, VM files, BMCs, the RA sender; every name and pid recorded in ``lab.json``.

``<state_dir>/lab.json`` is written before anything is made and updated after each process starts, so that
``destroy_lab`` cleans up after a crash at any point: it stops the qemus (``machine.pid`` of each VM), the
``ipmi_sim``s and the advertiser (RA + LLDP) by pid and start time (:mod:`metalbus.stack.processes`), then deletes the
namespace and the rack's veth end, then the lab directory. BMC passwords live in a 0600 file beside the record.
"""

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from ipaddress import IPv4Network
from pathlib import Path

from pydantic import BaseModel

from metalbus.lab.bmc import USERNAME, BmcFiles, generate_password, ipmi_sim_argv, write_bmc_config
from metalbus.lab.network import create_network, namespace_exists, remove_network
from metalbus.lab.topology import LabPlan, LabSpec, VmPlan, plan_lab
from metalbus.lab.vms import VmFiles, prepare_vm_files, qemu_argv, qemu_binary
from metalbus.stack.processes import running_identity, start_detached, stop_process

READY_TIMEOUT_S = 15.0
# RMCP presence ping (ASF class, IANA 4542, message type 0x80): ipmi_sim answers with a pong once listening.
RMCP_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00])


class LabError(RuntimeError):
    """The lab could not be built, or is already there."""


class VmRecord(BaseModel):
    name: str
    mac: str
    tap: str
    firmware: str
    bmc_address: str
    bmc_port: int
    bmc_username: str
    directory: Path
    serial_log: Path
    machine_pid_file: Path
    bmc_pid_file: Path


class LabRecord(BaseModel):
    """What ``lab.json`` holds: enough to find and remove everything the lab made."""

    lab_id: str
    namespace: str
    bridge: str
    rack_interface: str
    rack_address: str
    subnet: str
    dynamic_range: tuple[str, str]
    """The addresses the region's subnet should lease to the VMs (first, last)."""
    switch_name: str
    """The LLDP system name every VM sees as its neighbour."""
    directory: Path
    advertiser_pid_file: Path
    vms: list[VmRecord]


class LabPaths:
    """The lab's place in a state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir.resolve()
        self.record = self.root / "lab.json"
        self.directory = self.root / "lab"
        self.passwords = self.directory / "bmc-passwords.json"


def load_lab(paths: LabPaths) -> LabRecord | None:
    try:
        return LabRecord.model_validate_json(paths.record.read_text())
    except OSError:
        return None


def bmc_passwords(paths: LabPaths) -> dict[str, str]:
    """VM name → its BMC's password (empty when the lab is gone)."""
    try:
        passwords = json.loads(paths.passwords.read_text())
    except (OSError, ValueError):
        return {}
    return {str(name): str(password) for name, password in passwords.items()}


def create_lab(spec: LabSpec, state_dir: Path) -> LabRecord:
    """Build the lab and return its record once every BMC answers; on failure remove what was made and raise."""
    paths = LabPaths(state_dir)
    if paths.record.exists():
        raise LabError(f"a lab is already recorded in {paths.record}: run `metalbus lab down` first")
    plan = plan_lab(spec)
    refuse_conflicts(plan)
    record = record_of(plan, paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    save_lab(paths, record)
    try:
        build(plan, record, paths)
    except BaseException:
        destroy_lab(state_dir)
        raise
    return record


def refuse_conflicts(plan: LabPlan) -> None:
    if namespace_exists(plan.namespace):
        raise LabError(f"namespace {plan.namespace} already exists (another lab with id {plan.spec.lab_id}?)")
    if any(network.overlaps(plan.spec.subnet) for network in root_networks()):
        raise LabError(f"subnet {plan.spec.subnet} overlaps a network of this host: choose another")


def root_networks() -> list[IPv4Network]:
    """The IPv4 networks of the root namespace's interfaces, from /proc/net/route."""
    networks = []
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        fields = line.split()
        destination, mask = (int(fields[1], 16), int(fields[7], 16))
        if mask:
            network = socket.inet_ntoa(destination.to_bytes(4, "little"))
            networks.append(IPv4Network(f"{network}/{bin(mask).count('1')}", strict=False))
    return networks


def record_of(plan: LabPlan, paths: LabPaths) -> LabRecord:
    return LabRecord(
        lab_id=plan.spec.lab_id,
        namespace=plan.namespace,
        bridge=plan.bridge,
        rack_interface=plan.rack_interface,
        rack_address=plan.rack_interface_cidr,
        subnet=str(plan.spec.subnet),
        dynamic_range=(str(plan.dynamic_range[0]), str(plan.dynamic_range[1])),
        switch_name=plan.switch_name,
        directory=paths.directory,
        advertiser_pid_file=paths.directory / "advertiser.pid",
        vms=[vm_record(vm, paths.directory / vm.name) for vm in plan.vms],
    )


def vm_record(vm: VmPlan, directory: Path) -> VmRecord:
    files, bmc = VmFiles(directory), BmcFiles(directory / "bmc")
    return VmRecord(
        name=vm.name,
        mac=vm.mac,
        tap=vm.tap,
        firmware=vm.firmware.value,
        bmc_address=str(vm.bmc_address),
        bmc_port=vm.bmc_port,
        bmc_username=USERNAME,
        directory=directory,
        serial_log=files.serial_log,
        machine_pid_file=files.machine_pid,
        bmc_pid_file=bmc.pid_file,
    )


def save_lab(paths: LabPaths, record: LabRecord) -> None:
    paths.record.write_text(record.model_dump_json(indent=2) + "\n")


def build(plan: LabPlan, record: LabRecord, paths: LabPaths) -> None:
    create_network(plan)
    paths.directory.mkdir(parents=True, exist_ok=True)
    passwords = {vm.name: generate_password() for vm in plan.vms}
    paths.passwords.touch(mode=0o600)
    paths.passwords.write_text(json.dumps(passwords, indent=2) + "\n")
    binary = qemu_binary()
    for vm, vm_state in zip(plan.vms, record.vms, strict=True):
        files = VmFiles(vm_state.directory)
        prepare_vm_files(files, vm, plan.spec)
        bmc = BmcFiles(vm_state.directory / "bmc")
        write_bmc_config(bmc, vm, passwords[vm.name], files.directory, qemu_argv(vm, plan.spec, files, binary))
        start_in_lab(ipmi_sim_argv(bmc, plan.namespace), bmc.log, bmc.pid_file)
    advertiser = ["ip", "netns", "exec", plan.namespace, sys.executable, "-m", "metalbus.lab.advertiser"]
    ports = [f"{vm.tap}={vm.name}" for vm in plan.vms]
    argv = [*advertiser, plan.bridge, plan.switch_name, *ports]
    start_in_lab(argv, paths.directory / "advertiser.log", record.advertiser_pid_file)
    wait_for_bmcs(record, time.monotonic() + READY_TIMEOUT_S)


def start_in_lab(argv: list[str], log: Path, pid_file: Path) -> None:
    start_detached(argv, log_path=log, pid_path=pid_file, env=os.environ, cwd=log.parent)


def wait_for_bmcs(record: LabRecord, deadline: float) -> None:
    """Every BMC answers an RMCP ping sent from the root namespace (the rack's side of the lab)."""
    for vm in record.vms:
        if not bmc_answers(vm, deadline):
            log = (vm.directory / "bmc" / "ipmi_sim.log").read_text(errors="replace")[-500:]
            raise LabError(f"BMC of {vm.name} did not answer at {vm.bmc_address}:{vm.bmc_port}: {log}")


def bmc_answers(vm: VmRecord, deadline: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            if running_identity(vm.bmc_pid_file) is None:
                return False
            with contextlib.suppress(OSError):
                probe.sendto(RMCP_PING, (vm.bmc_address, vm.bmc_port))
                if probe.recv(512):
                    return True
            time.sleep(0.05)
    return False


def destroy_lab(state_dir: Path) -> list[str]:
    """Stop and remove everything ``lab.json`` names (whatever already died); what was stopped or removed."""
    paths = LabPaths(state_dir)
    record = load_lab(paths)
    if record is None:
        return []
    removed = []
    for vm in record.vms:
        if stop_process(vm.machine_pid_file, grace_s=5.0):
            removed.append(f"qemu {vm.name}")
        if stop_process(vm.bmc_pid_file, grace_s=5.0):
            removed.append(f"ipmi_sim {vm.name}")
    if stop_process(record.advertiser_pid_file, grace_s=5.0):
        removed.append("advertiser (RA, LLDP)")
    removed.extend(remove_network(record.namespace, record.rack_interface))
    shutil.rmtree(record.directory, ignore_errors=True)
    paths.record.unlink(missing_ok=True)
    return removed
