"""A machine's life after its first commissioning, on real qemu VMs powered over IPMI: re-commission, abort
mid-way, the events an integrator reads back through the API, and a BMC that refuses the stored credentials.

One `metalbus demo --vms 2 --uefi 0` run (a private state directory, free ports but DHCP's 67, its own lab id and
subnet) brings two BIOS VMs to READY for the whole module; every test then works through the API only and reads
the lab's records (the qemu process the BMC starts and stops) to see what the VMs really did."""

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from metalbus.lab.lab import LabPaths, LabRecord, VmRecord, load_lab
from metalbus.stack.processes import running_identity
from tests.conftest import free_port, world_readable_temp_dir

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces, taps)"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
    pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="openipmi is not installed (scripts/setup.sh)"),
    pytest.mark.skipif(not list(Path("/boot").glob("vmlinuz-*")), reason="linux-image-amd64 is not installed"),
]

DEMO_TIMEOUT_S = 420
COMMISSION_WAIT_S = 150
POWER_OFF_WAIT_S = 20
EVENT_WAIT_S = 15  # the outbox publishes a committed change's event shortly after the reply
T = TypeVar("T")
STACK_PORTS = (
    "NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "TFTP_PORT", "RACK_HTTP_PORT",
    "APT_PROXY_PORT", "DNS_PORT", "SYSLOG_PORT",
)  # fmt: skip


@dataclass(frozen=True)
class Lab:
    """The demo's lab and stack, with an API client holding a fresh key."""

    state_dir: Path
    record: LabRecord
    api: httpx.Client

    def vm(self, index: int) -> VmRecord:
        return self.record.vms[index]

    def system_id(self, vm: VmRecord) -> str:
        [machine] = self.get(f"/machines?hostname={vm.name}")["items"]
        return str(machine["system_id"])

    def get(self, path: str) -> Any:
        response = self.api.get(f"/api/v1{path}")
        assert response.is_success, f"GET {path}: {response.status_code} {response.text}"
        return response.json()

    def send(self, method: str, path: str, body: Any) -> Any:
        response = self.api.request(method, f"/api/v1{path}", json=body)
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def events(self, **filters: str) -> list[dict[str, Any]]:
        """Every event of the history matching the filters (``kind``, ``id``), oldest first, page by page."""
        found: list[dict[str, Any]] = []
        after = 0
        for _ in range(100):  # bounded: 100 pages of 1000
            page = self.get("/events?" + "&".join(f"{k}={v}" for k, v in {**filters, "after": str(after)}.items()))
            found += page["events"]
            if not page["events"]:
                return found
            after = page["events"][-1]["sequence"]
        return found


def metalbus(
    state_dir: Path, env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    root = world_readable_temp_dir("metalbus-lifecycle-")
    state_dir = root / "state"
    env = os.environ | {f"METALBUS_STACK_{name}": str(free_port()) for name in STACK_PORTS}
    lab_id, subnet = f"l{secrets.token_hex(2)}", f"10.250.{secrets.randbelow(150) + 100}.0/24"
    try:
        demo = metalbus(
            state_dir, env, "demo", "--vms", "2", "--uefi", "0", "--lab-id", lab_id, "--subnet", subnet,
            "--timeout", "240", timeout=DEMO_TIMEOUT_S,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
        record = load_lab(LabPaths(state_dir))
        assert record is not None
        key = json.loads(metalbus(state_dir, env, "admin", "create-key", "--name", "lifecycle", "--json").stdout)
        base_url = f"http://127.0.0.1:{env['METALBUS_STACK_API_PORT']}"
        headers = {"Authorization": f"Bearer {key['key']}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=COMMISSION_WAIT_S + 30) as api:
            yield Lab(state_dir, record, api)
    finally:
        metalbus(state_dir, env, "demo", "--down")
        shutil.rmtree(root, ignore_errors=True)


def eventually(probe: Callable[[], T], accept: Callable[[T], bool], timeout_s: float) -> T:
    deadline = time.monotonic() + timeout_s
    value = probe()
    while not accept(value) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = probe()
    return value


def vm_running(vm: VmRecord) -> bool:
    """The BMC reports power on exactly while the qemu its chassis script started lives."""
    return running_identity(vm.machine_pid_file) is not None


def data_of(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event["data"] for event in events if event["subject"].startswith(f"events.{kind}.")]


def transitions(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["action"], e["from_status"], e["to_status"]) for e in data_of(events, "machine")]


def power_commands(events: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """The power events of commands (on, off), without the ``query`` ones power polling records."""
    return [(e["action"], e["state"], e["error"]) for e in data_of(events, "power") if e["action"] != "query"]


def history_until(lab: Lab, system_id: str, last_action: str, last_command: str) -> list[dict[str, Any]]:
    """The machine's event history once it ends with that transition and that power command (or the deadline)."""

    def complete(events: list[dict[str, Any]]) -> bool:
        return transitions(events)[-1][0] == last_action and power_commands(events)[-1][0] == last_command

    return eventually(lambda: lab.events(id=system_id), complete, EVENT_WAIT_S)


def test_aborting_a_commissioning_machine_powers_it_off_and_returns_it_to_ready(lab: Lab) -> None:
    vm = lab.vm(1)
    system_id = lab.system_id(vm)
    assert eventually(lambda: vm_running(vm), lambda running: not running, POWER_OFF_WAIT_S) is False  # poweroff -f

    started = lab.send("POST", f"/machines/{system_id}/commission", {})
    assert started["status"] == "commissioning"
    assert vm_running(vm)  # the reply comes after the power on over IPMI
    aborted = lab.send("POST", f"/machines/{system_id}/abort", {"reason": "lifecycle test"})

    assert aborted["status"] == "ready"
    assert eventually(lambda: vm_running(vm), lambda running: not running, POWER_OFF_WAIT_S) is False
    assert lab.send("POST", f"/machines/{system_id}/power", {"action": "query"})["state"] == "off"
    events = history_until(lab, system_id, "abort", "off")
    assert transitions(events)[-2:] == [("commission", "ready", "commissioning"), ("abort", "commissioning", "ready")]
    assert data_of(events, "machine")[-1]["reason"] == "lifecycle test"
    assert power_commands(events)[-2:] == [("on", "on", None), ("off", "off", None)]
    assert lab.get(f"/machines/{system_id}")["status"] == "ready"


def test_recommissioning_a_ready_machine_boots_it_again_and_stores_a_second_run(lab: Lab) -> None:
    vm = lab.vm(0)
    system_id = lab.system_id(vm)
    first_run = lab.get(f"/machines/{system_id}/results")
    assert first_run and power_commands(lab.events(id=system_id)) == [("on", "on", None)]

    body = {"wait": True, "wait_timeout_s": COMMISSION_WAIT_S}
    settled = lab.send("POST", f"/machines/{system_id}/commission", body)

    assert settled["status"] == "ready", settled
    results = lab.get(f"/machines/{system_id}/results")
    assert results[: len(first_run)] == first_run
    second_run = results[len(first_run) :]
    assert [r["name"] for r in second_run] == [r["name"] for r in first_run]
    assert all(r["exit_status"] == 0 for r in second_run)
    assert min(r["recorded_at"] for r in second_run) > max(r["recorded_at"] for r in first_run)
    events = history_until(lab, system_id, "commissioning_succeeded", "on")
    assert transitions(events)[-2:] == [
        ("commission", "ready", "commissioning"),
        ("commissioning_succeeded", "commissioning", "ready"),
    ]
    assert power_commands(events) == [("on", "on", None), ("on", "on", None)]  # over IPMI, once per run


def test_the_event_history_shows_each_machines_transitions_power_leases_and_results(lab: Lab) -> None:
    [subnet] = [s for s in lab.get("/subnets") if s["cidr"] == lab.record.subnet]
    leases = [event["lease"] for event in data_of(lab.events(kind="lease", id=str(subnet["subnet_id"])), "lease")]
    for vm in lab.record.vms:
        system_id = lab.system_id(vm)
        events = lab.events(id=system_id)
        assert transitions(events)[:3] == [
            (None, None, "new"),  # enrolled
            ("commission", "new", "commissioning"),
            ("commissioning_succeeded", "commissioning", "ready"),
        ]
        assert ("on", "on", None) in power_commands(events)
        results = lab.get(f"/machines/{system_id}/results")
        assert [(e["name"], e["exit_status"]) for e in data_of(events, "result")] == [
            (r["name"], r["exit_status"]) for r in results
        ]
        bound = [lease for lease in leases if lease["mac"] == vm.mac and lease["state"] == "bound"]
        assert bound and all(ip_address(lease["ip"]) in ip_network(lab.record.subnet) for lease in bound), leases
        sequences = [event["sequence"] for event in events]
        assert sequences == sorted(sequences)


def test_a_bmc_refusing_the_stored_credentials_fails_commissioning_with_that_reason(lab: Lab) -> None:
    vm = lab.vm(1)
    system_id = lab.system_id(vm)
    lab.send("PATCH", f"/machines/{system_id}", {"power_secrets": {"password": "not-" + secrets.token_hex(6)}})

    failed = lab.send("POST", f"/machines/{system_id}/commission", {})

    assert failed["status"] == "failed_commissioning", failed
    assert "refused the credentials" in (failed["status_reason"] or ""), failed
    assert vm.bmc_address in failed["status_reason"]
    assert not vm_running(vm)
    events = history_until(lab, system_id, "commissioning_failed", "on")
    assert transitions(events)[-1] == ("commissioning_failed", "commissioning", "failed_commissioning")
    action, state, error = power_commands(events)[-1]
    assert (action, state) == ("on", "unknown")
    assert "refused the credentials" in (error or "")
