"""`metalbus doctor` on this host: a busy port and a missing interface are reported; a healthy stack is clean."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, world_readable_temp_dir

BOOT_FILES_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "boot-files.sh"
RACK_SERVICES = ("RACK_DHCP", "RACK_TFTP", "RACK_PROXY", "RACK_POWER")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metalbus(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def doctor_rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    rows: list[dict[str, str]] = json.loads(result.stdout)
    return {row["name"]: row for row in rows}


def loopback_rack_env(boot_root: Path) -> dict[str, str]:
    """Every rack port on a free loopback port (nothing a lab or another test uses), NATS nowhere."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("METALBUS_")}
    for service in RACK_SERVICES:
        env[f"METALBUS_{service}_NATS_URL"] = f"nats://127.0.0.1:{free_port()}"
    env |= {
        "METALBUS_RACK_DHCP_PORT": str(free_udp_port()),
        "METALBUS_RACK_TFTP_LISTEN_ADDRESS": "127.0.0.1",
        "METALBUS_RACK_TFTP_PORT": str(free_udp_port()),
        "METALBUS_RACK_TFTP_HTTP_PORT": str(free_port()),
        "METALBUS_RACK_TFTP_BOOT_ROOT": str(boot_root),
        "METALBUS_RACK_PROXY_LISTEN_ADDRESS": "127.0.0.1",
        "METALBUS_RACK_PROXY_DNS_PORT": str(free_port()),
        "METALBUS_RACK_PROXY_APT_PROXY_PORT": str(free_port()),
        "METALBUS_RACK_PROXY_SYSLOG_PORTS": json.dumps([free_port()]),
        "METALBUS_RACK_POWER_INTERFACES": json.dumps(["127.0.0.1/8"]),
    }
    return env


def test_a_busy_port_and_a_missing_interface_are_both_reported_with_a_fix(tmp_path: Path) -> None:
    env = loopback_rack_env(tmp_path / "no-boot-root")
    missing_interface = f"mbdoc{uuid.uuid4().hex[:8]}"
    env["METALBUS_RACK_DHCP_SERVE_INTERFACES"] = json.dumps([missing_interface])
    tftp_port = int(env["METALBUS_RACK_TFTP_PORT"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", tftp_port))
        result = metalbus(env, "doctor", "--json", "--timeout", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    rows = doctor_rows(result)

    busy = rows[f"port {tftp_port}/udp (TFTP)"]
    assert busy["status"] == "fail"
    own_command = " ".join(part for part in Path("/proc/self/cmdline").read_text().split("\0") if part)
    assert f"in use by pid {os.getpid()}: {own_command}" in busy["detail"]
    assert f"stop pid {os.getpid()}" in busy["fix"] and "METALBUS_RACK_TFTP_PORT" in busy["fix"]

    interface = rows[f"interface {missing_interface}"]
    assert interface["status"] == "fail" and f"no interface {missing_interface}" in interface["detail"]
    assert "METALBUS_RACK_DHCP_SERVE_INTERFACES" in interface["fix"]

    free_rows = [name for name, row in rows.items() if name.startswith("port ") and name != busy["name"]]
    assert free_rows and all(rows[name]["status"] == "ok" for name in free_rows), rows
    assert rows["boot files"]["status"] == "fail" and "does not exist" in rows["boot files"]["detail"]
    nats = [row for name, row in rows.items() if name.startswith("NATS for")]
    assert len(nats) == 4 and all(row["status"] == "fail" for row in nats), "each service has its own NATS URL"
    assert rows["region"]["status"] == "fail" and rows["region"]["detail"] == "not asked: no NATS connection"


def test_the_table_names_the_failure_and_the_config_file_is_read(tmp_path: Path) -> None:
    env = loopback_rack_env(tmp_path / "no-boot-root")
    tftp_port = free_udp_port()
    del env["METALBUS_RACK_TFTP_PORT"]
    config = tmp_path / "rack.toml"
    config.write_text(f'[rack-tftp]\nport = {tftp_port}\nlisten_address = "127.0.0.1"\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", tftp_port))
        result = metalbus(env | {"COLUMNS": "250"}, "doctor", "--config", str(config), "--timeout", "0.5")
    assert result.returncode == 1
    busy_line = next(line for line in result.stdout.splitlines() if f"port {tftp_port}/udp (TFTP)" in line)
    assert "FAIL" in busy_line and f"pid {os.getpid()}" in busy_line


@pytest.fixture
def namespace_with_bare_interface() -> Iterator[tuple[str, str]]:
    """A network namespace of this test's own (loopback up) holding a veth interface with no address."""
    namespace, interface = f"mbdoc{uuid.uuid4().hex[:8]}", "mbdocveth0"
    subprocess.run(["ip", "netns", "add", namespace], check=True, capture_output=True, timeout=10)
    try:
        for command in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "link", "add", interface, "type", "veth", "peer", "name", "mbdocveth1"],
        ):
            subprocess.run(["ip", "netns", "exec", namespace, *command], check=True, capture_output=True, timeout=10)
        yield namespace, interface
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False, capture_output=True, timeout=10)


def test_an_interface_without_an_ipv4_address_fails_until_it_has_one(
    namespace_with_bare_interface: tuple[str, str], tmp_path: Path
) -> None:
    namespace, interface = namespace_with_bare_interface
    env = loopback_rack_env(tmp_path / "no-boot-root")
    env["METALBUS_RACK_DHCP_SERVE_INTERFACES"] = json.dumps([interface])
    in_namespace = ("ip", "netns", "exec", namespace, sys.executable, "-m", "metalbus.cli.main")
    doctor = (*in_namespace, "doctor", "--json", "--timeout", "0.3")

    bare = subprocess.run(doctor, capture_output=True, text=True, env=env, timeout=60, check=False)
    row = doctor_rows(bare)[f"interface {interface}"]
    assert row["status"] == "fail" and "has no IPv4 address" in row["detail"], row
    assert f"dev {interface}" in row["fix"]

    address = ["ip", "netns", "exec", namespace, "ip", "addr", "add", "10.77.0.1/24", "dev", interface]
    subprocess.run(address, check=True, capture_output=True, timeout=10)
    addressed = subprocess.run(doctor, capture_output=True, text=True, env=env, timeout=60, check=False)
    row = doctor_rows(addressed)[f"interface {interface}"]
    assert row["status"] == "ok" and "10.77.0.1/24" in row["detail"], row


def test_embedded_without_a_recorded_stack_says_so_in_one_line(tmp_path: Path) -> None:
    result = metalbus(dict(os.environ), "doctor", "--embedded", "--state-dir", str(tmp_path / "never-up"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"metalbus: no stack recorded in {tmp_path / 'never-up'} (run `metalbus up` there first)"
    ]


# -- a healthy embedded stack -----------------------------------------------------------------------------------
STACK_PORTS = (
    "NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "DHCP_PORT", "TFTP_PORT", "RACK_HTTP_PORT",
    "APT_PROXY_PORT", "DNS_PORT", "SYSLOG_PORT",
)  # fmt: skip


@pytest.fixture
def running_stack() -> Iterator[tuple[Path, dict[str, str]]]:
    root = world_readable_temp_dir("metalbus-doctor-")
    state_dir = root / "state"
    env = {name: value for name, value in os.environ.items() if not name.startswith("METALBUS_")}
    env |= {f"METALBUS_STACK_{name}": str(free_port()) for name in STACK_PORTS}
    env["METALBUS_STACK_HEARTBEAT_INTERVAL_S"] = "0.5"
    # Metrics ports count up from one base (6 of them): a random one below the ephemeral range, not the default
    # that another engineer's `metalbus up` may hold.
    env["METALBUS_STACK_METRICS_PORT_BASE"] = str(random.randrange(20000, 30000, 16))
    # A host with no interface but loopback would rightly warn "this rack reaches no BMC network".
    env["METALBUS_RACK_POWER_INTERFACES"] = json.dumps(["127.0.0.1/8"])
    subprocess.run(["bash", str(BOOT_FILES_SCRIPT), str(state_dir / "boot")], check=True, capture_output=True)
    try:
        started = metalbus(env, "up", "--state-dir", str(state_dir), timeout=180)
        assert started.returncode == 0, started.stderr
        yield state_dir, env
    finally:
        metalbus(env, "down", "--state-dir", str(state_dir), timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def pid_of(state_dir: Path, component: str) -> int:
    return int((state_dir / "run" / f"{component}.pid").read_text().split()[0])


@pytest.mark.e2e
def test_a_healthy_embedded_stack_passes_every_check(running_stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = running_stack
    result = metalbus(env, "doctor", "--embedded", "--state-dir", str(state_dir), "--json")
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    assert result.returncode == 0, rows
    assert [row for row in rows if row["status"] != "ok"] == []

    by_name = {row["name"]: row for row in rows}
    tftp = by_name[f"port {env['METALBUS_STACK_TFTP_PORT']}/udp (TFTP)"]
    assert f"held by rack-tftp (pid {pid_of(state_dir, 'rack-tftp')})" in tftp["detail"]
    for protocol in ("udp", "tcp"):
        dns = by_name[f"port {env['METALBUS_STACK_DNS_PORT']}/{protocol} (DNS)"]
        assert f"held by rack-proxy (pid {pid_of(state_dir, 'rack-proxy')})" in dns["detail"]
    assert "rack-tftp" in by_name[f"port {env['METALBUS_STACK_RACK_HTTP_PORT']}/tcp (rack HTTP)"]["detail"]
    power_metrics = int(env["METALBUS_STACK_METRICS_PORT_BASE"]) + 4  # region-1, region-2, dhcp, tftp, power
    power_row = by_name[f"port {power_metrics}/tcp (Prometheus `/metrics` of rack-power)"]
    assert f"held by rack-power (pid {pid_of(state_dir, 'rack-power')})" in power_row["detail"]
    region = by_name["region"]["detail"]
    # The region's health if the rack's NATS user may ask it, else the subnet list every rack may ask.
    assert region.startswith(("region-1", "region-2")) or "answers region.subnets.list (0 subnets)" in region
    assert "amd64 BIOS and UEFI loaders present" in by_name["boot files"]["detail"]
