"""`metalbus lab`: a namespace with a provisioning bridge, qemu VMs on taps, and IPMI BMCs that power them.

Each test runs the real CLI (``python -m metalbus.cli.main lab …``) in a state directory of its own, with a
unique lab id and subnet, and talks to the BMCs from the root namespace through the rack's interface exactly as
rack-power would: with ``ipmitool -I lanplus -C 3`` and with our IpmiDriver. A fixture removes the lab even when
a test fails (``lab down``, then the library's ``destroy_lab`` as a fallback).
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from scapy.contrib.lldp import LLDPDUPortID, LLDPDUSystemName, LLDPDUTimeToLive
from scapy.layers.inet6 import ICMPv6ND_RA
from scapy.layers.l2 import Ether

from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerState
from metalbus.lab.lab import LabPaths, LabRecord, VmRecord, bmc_passwords, destroy_lab, load_lab
from metalbus.lab.network import link_exists, namespace_exists
from metalbus.stack.processes import process_start_ticks, read_pid_file, running_identity
from metalbus_rack_power.drivers import Bmc
from metalbus_rack_power.ipmi import IpmiDriver
from metalbus_rack_power.retry import RetryPolicy

CLI_TIMEOUT_S = 60.0
POWER_TIMEOUT_S = 15.0
BOOT_TRAFFIC_TIMEOUT_S = 60.0
CAPTURE_TIMEOUT_S = 10.0
ETH_P_ALL = 0x0003
ETHERTYPE_LLDP = 0x88CC

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab makes network namespaces: run as root"),
    pytest.mark.skipif(
        not all(shutil.which(tool) for tool in ("ipmi_sim", "ipmitool", "qemu-system-x86_64")),
        reason="openipmi, ipmitool and qemu-system-x86 are needed (scripts/setup.sh installs them)",
    ),
]


def metalbus(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
        env=env,
    )


def free_subnet() -> str:
    """A random /24 in 10.200-254.x that no interface of this host is on."""
    for _ in range(50):
        candidate = f"10.{secrets.randbelow(55) + 200}.{secrets.randbelow(256)}"
        if candidate + "." not in subprocess.run(["ip", "-4", "-o", "address"], capture_output=True, text=True).stdout:
            return f"{candidate}.0/24"
    raise RuntimeError("no free /24 found")


@dataclass
class Lab:
    state_dir: Path
    record: LabRecord
    passwords: dict[str, str]
    up_output: str

    def vm(self, firmware: str) -> VmRecord:
        return next(vm for vm in self.record.vms if vm.firmware == firmware)

    def ipmitool(self, vm: VmRecord, *args: str) -> str:
        command = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", vm.bmc_address, "-p", str(vm.bmc_port)]
        done = subprocess.run(
            [*command, "-U", vm.bmc_username, "-P", self.passwords[vm.name], *args],
            capture_output=True,
            text=True,
            timeout=POWER_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def bmc(self, vm: VmRecord) -> Bmc:
        parameters = {"address": vm.bmc_address, "port": vm.bmc_port, "username": vm.bmc_username}
        return Bmc(PowerType.IPMI, parameters, {"password": self.passwords[vm.name]})


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab of one BIOS and one UEFI VM, both off; removed at the end whatever happened."""
    state_dir = tmp_path / "state"
    up = metalbus(
        *("lab", "up", "--vms", "2", "--uefi", "1", "--state-dir", str(state_dir)),
        *("--lab-id", secrets.token_hex(3), "--subnet", free_subnet(), "--memory", "256", "--disk", "64"),
    )
    try:
        assert up.returncode == 0, up.stderr
        record = load_lab(LabPaths(state_dir))
        assert record is not None
        yield Lab(state_dir, record, bmc_passwords(LabPaths(state_dir)), up.stdout)
    finally:
        metalbus("lab", "down", "--state-dir", str(state_dir))
        destroy_lab(state_dir)


def serial_bytes(vm: VmRecord) -> int:
    """What the VM wrote to its serial log so far; 0 before qemu has even made the file."""
    try:
        return vm.serial_log.stat().st_size
    except FileNotFoundError:
        return 0


def eventually(probe: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return True
        time.sleep(0.1)
    return probe()


def qemu_of(vm: VmRecord) -> int | None:
    identity = running_identity(vm.machine_pid_file)
    return identity.pid if identity else None


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def frame_from(interface: str, mac: str, timeout_s: float) -> bool:
    """Whether a frame with source ``mac`` crosses ``interface`` (the rack's) within the timeout."""
    wanted = bytes.fromhex(mac.replace(":", ""))
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((interface, 0))
        sock.settimeout(0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if sock.recv(2048)[6:12] == wanted:
                    return True
            except TimeoutError:
                continue
    return False


CAPTURE = """
import socket, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL: outgoing frames too
sock.bind((sys.argv[1], 0))
wanted = int(sys.argv[2]).to_bytes(2, "big")
for _ in range(10000):
    frame = sock.recv(2048)
    if frame[12:14] == wanted:
        print(frame.hex())
        break
"""


def frame_sent_on(namespace: str, interface: str, ethertype: int) -> bytes:
    """The first frame of ``ethertype`` crossing ``interface`` inside ``namespace`` (either way)."""
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", CAPTURE, interface, str(ethertype)],
        capture_output=True,
        text=True,
        timeout=CAPTURE_TIMEOUT_S,
        check=True,
    )
    return bytes.fromhex(done.stdout.strip())


def is_router_advertisement(frame: bytes) -> bool:
    return frame[12:14] == b"\x86\xdd" and frame[20] == socket.IPPROTO_ICMPV6 and frame[54] == 134


def frame_on_rack_interface(interface: str, accept: Callable[[bytes], bool]) -> bytes:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((interface, 0))
        sock.settimeout(0.5)
        deadline = time.monotonic() + CAPTURE_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                frame = sock.recv(2048)
                if accept(frame):
                    return frame
    raise AssertionError(f"no such frame on {interface} within {CAPTURE_TIMEOUT_S} s")


def test_lab_up_builds_the_namespace_bridge_taps_rack_interface_and_answering_bmcs(lab: Lab) -> None:
    record = lab.record

    assert namespace_exists(record.namespace)
    assert link_exists(record.bridge, record.namespace)
    assert all(link_exists(vm.tap, record.namespace) for vm in record.vms)
    addresses = subprocess.run(
        ["ip", "-4", "-o", "address", "show", "dev", record.rack_interface], capture_output=True, text=True
    ).stdout
    assert f"inet {record.rack_address} " in addresses  # the rack's end stays in the root namespace
    assert all(running_identity(vm.bmc_pid_file) for vm in record.vms)
    assert [lab.ipmitool(vm, "chassis", "power", "status") for vm in record.vms] == ["Chassis Power is off"] * 2
    assert (LabPaths(lab.state_dir).passwords.stat().st_mode & 0o777) == 0o600
    first, last = record.dynamic_range
    assert f"VM addresses {first}-{last}, LLDP neighbour {record.switch_name}" in lab.up_output
    rows = {tuple(line.split()) for line in lab.up_output.splitlines()}
    for vm in record.vms:
        assert (vm.name, vm.mac, vm.firmware, f"{vm.bmc_address}:623", "admin", lab.passwords[vm.name], "off") in rows


def test_ipmitool_power_on_starts_the_vms_qemu_on_its_tap_and_power_off_stops_it(lab: Lab) -> None:
    vm = lab.vm("uefi")

    assert lab.ipmitool(vm, "chassis", "bootdev", "pxe") == "Set Boot Device to pxe"
    assert lab.ipmitool(vm, "chassis", "power", "on") == "Chassis Power Control: Up/On"
    pid = qemu_of(vm)
    assert pid is not None
    arguments = command_line(pid)
    assert f"tap,id=net0,ifname={vm.tap},script=no,downscript=no" in arguments
    assert f"e1000,netdev=net0,mac={vm.mac}" in arguments
    assert lab.ipmitool(vm, "chassis", "power", "status") == "Chassis Power is on"
    assert eventually(lambda: serial_bytes(vm) > 0, POWER_TIMEOUT_S), "OVMF wrote nothing to serial"
    size = serial_bytes(vm)
    assert eventually(lambda: serial_bytes(vm) > size, BOOT_TRAFFIC_TIMEOUT_S), "the serial log froze"

    assert lab.ipmitool(vm, "chassis", "power", "off") == "Chassis Power Control: Down/Off"

    assert process_start_ticks(pid) is None
    assert lab.ipmitool(vm, "chassis", "power", "status") == "Chassis Power is off"


def test_a_powered_on_bios_vm_is_heard_on_the_rack_interface(lab: Lab) -> None:
    vm = lab.vm("bios")

    lab.ipmitool(vm, "chassis", "power", "on")

    assert frame_from(lab.record.rack_interface, vm.mac, BOOT_TRAFFIC_TIMEOUT_S)


def test_each_vm_sees_the_lab_switch_as_its_lldp_neighbour_and_the_link_carries_router_advertisements(
    lab: Lab,
) -> None:
    vm = lab.vm("bios")
    lab.ipmitool(vm, "chassis", "power", "on")

    lldp = Ether(frame_sent_on(lab.record.namespace, vm.tap, ETHERTYPE_LLDP))
    advertisement = Ether(frame_on_rack_interface(lab.record.rack_interface, is_router_advertisement))

    assert lldp.dst == "01:80:c2:00:00:0e"
    assert lldp[LLDPDUSystemName].system_name == lab.record.switch_name.encode()
    assert lldp[LLDPDUPortID].id == vm.tap.encode()
    assert lldp[LLDPDUTimeToLive].ttl == 120
    assert advertisement[ICMPv6ND_RA].routerlifetime == 0  # "nothing to configure here": no default route


async def test_the_rack_power_ipmi_driver_powers_a_vm_on_resets_it_and_powers_it_off(lab: Lab) -> None:
    vm = lab.vm("bios")
    driver = IpmiDriver(max_workers=2, timeout_s=10.0, retry=RetryPolicy(retries=1))
    try:
        await driver.set_boot_pxe(lab.bmc(vm))
        await driver.on(lab.bmc(vm))
        pid = qemu_of(vm)
        assert pid is not None and vm.mac in " ".join(command_line(pid))
        assert await driver.query(lab.bmc(vm)) is PowerState.ON

        await driver.cycle(lab.bmc(vm))  # a running machine is reset: a fresh qemu
        restarted = qemu_of(vm)
        assert restarted is not None and restarted != pid and process_start_ticks(pid) is None

        await driver.off(lab.bmc(vm))

        assert await driver.query(lab.bmc(vm)) is PowerState.OFF
        assert process_start_ticks(restarted) is None
        assert (vm.directory / "boot").read_text().strip() == "pxe"
    finally:
        driver.close()


def test_lab_down_leaves_no_namespace_link_bmc_or_qemu(lab: Lab) -> None:
    record = lab.record
    lab.ipmitool(record.vms[0], "chassis", "power", "on")
    machine = read_pid_file(record.vms[0].machine_pid_file)
    processes = [read_pid_file(vm.bmc_pid_file) for vm in record.vms] + [machine]
    advertiser = read_pid_file(record.advertiser_pid_file)

    down = metalbus("lab", "down", "--state-dir", str(lab.state_dir))

    assert down.returncode == 0, down.stderr
    assert not namespace_exists(record.namespace)
    assert not link_exists(record.rack_interface)
    for identity in [*processes, advertiser]:
        assert identity is not None and process_start_ticks(identity.pid) != identity.start_ticks
    assert not LabPaths(lab.state_dir).record.exists()
    assert not record.directory.exists()


def test_lab_down_cleans_the_network_after_the_lab_processes_died(lab: Lab) -> None:
    record = lab.record
    for pid_file in [*(vm.bmc_pid_file for vm in record.vms), record.advertiser_pid_file]:
        identity = read_pid_file(pid_file)
        assert identity is not None
        os.kill(identity.pid, signal.SIGKILL)
    assert eventually(lambda: all(running_identity(vm.bmc_pid_file) is None for vm in record.vms), 5.0)

    status = metalbus("lab", "status", "--state-dir", str(lab.state_dir))
    down = metalbus("lab", "down", "--state-dir", str(lab.state_dir))

    assert status.returncode == 1
    assert f"missing: ipmi_sim of {record.vms[0].name}" in status.stdout
    assert down.returncode == 0, down.stderr
    assert not namespace_exists(record.namespace)
    assert not link_exists(record.rack_interface)


def test_a_failed_lab_up_removes_the_network_it_had_made(tmp_path: Path) -> None:
    """Without qemu on the PATH, `up` fails after building the network, and leaves nothing behind."""
    tools = tmp_path / "bin"
    tools.mkdir()
    ip_path = shutil.which("ip")
    assert ip_path is not None
    (tools / "ip").symlink_to(ip_path)
    lab_id = secrets.token_hex(3)
    state_dir = tmp_path / "state"

    up = metalbus(
        *("lab", "up", "--vms", "1", "--state-dir", str(state_dir), "--lab-id", lab_id, "--subnet", free_subnet()),
        env={**os.environ, "PATH": str(tools)},
    )

    assert up.returncode == 1
    assert "qemu-system-x86_64 is missing" in up.stderr
    assert not namespace_exists(f"mb-lab-{lab_id}")
    assert not link_exists(f"mbl{lab_id}r")
    assert not LabPaths(state_dir).record.exists()
