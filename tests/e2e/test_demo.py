"""`metalbus demo`, the product's main job on one machine: a lab of a BIOS and a UEFI qemu VM, powered on over IPMI,
PXE-booted by the stack's rack and commissioned to READY through the API; then `metalbus demo --down` removes it all.

The demo runs as the operator runs it (a subprocess), in a fresh state directory with free ports for everything but
DHCP (port 67, which firmware needs: rack-dhcp binds it on the lab's rack interface only), a lab id and subnet of its
own. Proof is observable: the exit status, the printed table, and the machines' inventory read back from the API
matching the lab's VMs (MAC, cores, memory, disk size)."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from metalbus.lab.network import namespace_exists
from metalbus.stack.processes import running_identity
from tests.conftest import free_port, world_readable_temp_dir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces, taps)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
    pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="openipmi is not installed (scripts/setup.sh)"),
    pytest.mark.skipif(not list(Path("/boot").glob("vmlinuz-*")), reason="linux-image-amd64 is not installed"),
    pytest.mark.skipif(not Path("/usr/share/OVMF").exists(), reason="ovmf is not installed (scripts/setup.sh)"),
]

DEMO_TIMEOUT_S = 420
LAB_MEMORY_MIB = 512  # the lab's defaults: 1 vCPU, 512 MiB, a 1024 MiB blank disk
LAB_DISK_BYTES = 1024 << 20
STACK_PORTS = (
    "NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "TFTP_PORT", "RACK_HTTP_PORT",
    "APT_PROXY_PORT", "DNS_PORT", "SYSLOG_PORT",
)  # fmt: skip


@dataclass(frozen=True)
class DemoRun:
    state_dir: Path
    env: dict[str, str]
    lab_id: str
    subnet: str


def metalbus(run: DemoRun, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args, "--state-dir", str(run.state_dir)],
        capture_output=True,
        text=True,
        env=run.env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def demo_run() -> Iterator[DemoRun]:
    root = world_readable_temp_dir("metalbus-demo-")
    env = os.environ | {f"METALBUS_STACK_{name}": str(free_port()) for name in STACK_PORTS}
    run = DemoRun(root / "state", env, f"d{secrets.token_hex(2)}", f"10.250.{secrets.randbelow(150) + 100}.0/24")
    try:
        yield run
    finally:
        metalbus(run, "lab", "down")
        metalbus(run, "down")
        shutil.rmtree(root, ignore_errors=True)


def api_get(run: DemoRun, key: str, path: str) -> Any:
    url = f"http://127.0.0.1:{run.env['METALBUS_STACK_API_PORT']}/api/v1{path}"
    response = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=20)
    response.raise_for_status()
    return response.json()


def live_components(state_dir: Path) -> list[str]:
    pid_files = [*(state_dir / "run").glob("*.pid"), state_dir / "postgres" / "postgres.pid-identity"]
    return sorted(path.name.split(".")[0] for path in pid_files if running_identity(path))


def test_the_demo_commissions_a_bios_and_a_uefi_vm_to_ready_with_their_inventory(demo_run: DemoRun) -> None:
    demo = metalbus(
        demo_run,
        *("demo", "--vms", "2", "--uefi", "1", "--lab-id", demo_run.lab_id, "--subnet", demo_run.subnet),
        *("--timeout", "300"),
        timeout=DEMO_TIMEOUT_S,
    )
    print(demo.stdout, demo.stderr)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]

    lab = json.loads(metalbus(demo_run, "lab", "status", "--json").stdout)
    vms = {vm["name"]: vm for vm in lab["vms"]}
    assert sorted(vm["firmware"] for vm in vms.values()) == ["bios", "uefi"]
    table_rows = [line for line in demo.stdout.splitlines() if any(name in line for name in vms) and "│" in line]
    assert len(table_rows) == 2 and all("READY" in row for row in table_rows), demo.stdout
    key = metalbus(demo_run, "admin", "create-key", "--name", "demo-test", "--json")
    api_key = json.loads(key.stdout)["key"]
    for name, vm in vms.items():
        [machine] = api_get(demo_run, api_key, f"/machines?hostname={name}")["items"]
        inventory = api_get(demo_run, api_key, f"/machines/{machine['system_id']}/inventory")
        assert machine["status"] == "ready"
        assert machine["power_type"] == "ipmi"
        assert machine["power_parameters"]["address"] == vm["bmc_address"]
        assert inventory["cpu_count"] == 1
        assert LAB_MEMORY_MIB * 0.8 <= inventory["memory_mib"] <= LAB_MEMORY_MIB
        assert [disk["size_bytes"] for disk in inventory["block_devices"]] == [LAB_DISK_BYTES]
        assert [interface["mac"] for interface in inventory["interfaces"]] == [vm["mac"]]
        assert f"{name}: commission call to READY" in demo.stdout

    down = metalbus(demo_run, "demo", "--down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not namespace_exists(lab["namespace"])
    assert live_components(demo_run.state_dir) == []


def wait_for_output(process: subprocess.Popen[str], log: Path, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        text = log.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.5)
    return log.read_text(errors="replace")


def test_interrupting_the_demo_removes_the_lab_and_keeps_the_stack_running(demo_run: DemoRun) -> None:
    log = demo_run.state_dir.parent / "demo.log"
    argv = [sys.executable, "-m", "metalbus.cli.main", "demo", "--state-dir", str(demo_run.state_dir)]
    argv += ["--vms", "1", "--uefi", "0", "--lab-id", demo_run.lab_id, "--subnet", demo_run.subnet]
    with log.open("w") as output:
        process = subprocess.Popen(
            argv, stdout=output, stderr=subprocess.STDOUT, env=demo_run.env | {"PYTHONUNBUFFERED": "1"}, text=True
        )
    try:
        seen = wait_for_output(process, log, "-> COMMISSIONING", DEMO_TIMEOUT_S)
        assert "-> COMMISSIONING" in seen, seen[-4000:]
        lab = json.loads(metalbus(demo_run, "lab", "status", "--json").stdout)
        process.send_signal(signal.SIGTERM)
        exit_status = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    assert exit_status == 130, log.read_text()
    assert "the stack keeps running: `metalbus down` stops it" in log.read_text()
    assert not namespace_exists(lab["namespace"])
    assert metalbus(demo_run, "lab", "status").returncode == 1  # no lab recorded any more
    assert metalbus(demo_run, "status").returncode == 0  # every component of the stack still healthy
