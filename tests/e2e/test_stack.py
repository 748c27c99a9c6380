"""`metalbus up` → healthy → `down`, for real: every process, port and file of the embedded stack."""

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metalbus.stack.processes import running_identity
from tests.conftest import free_port, world_readable_temp_dir

pytestmark = pytest.mark.e2e

COMPONENTS = [
    "nats", "postgres", "region-1", "region-2", "api", "rack-dhcp", "rack-tftp", "rack-power", "rack-proxy",
]  # fmt: skip


def metalbus(state_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


@pytest.fixture
def stack_env() -> Iterator[tuple[Path, dict[str, str]]]:
    root = world_readable_temp_dir("metalbus-e2e-")
    ports = {
        "NATS_PORT": free_port(),
        "NATS_MONITOR_PORT": free_port(),
        "POSTGRES_PORT": free_port(),
        "API_PORT": free_port(),
        "TFTP_PORT": free_port(),
        "RACK_HTTP_PORT": free_port(),
    }
    env = os.environ | {f"METALBUS_STACK_{name}": str(port) for name, port in ports.items()}
    env["METALBUS_STACK_HEARTBEAT_INTERVAL_S"] = "0.5"
    state_dir = root / "state"
    boot_files_script = Path(__file__).resolve().parents[2] / "scripts" / "boot-files.sh"
    subprocess.run(["bash", str(boot_files_script), str(state_dir / "boot")], check=True, capture_output=True)
    try:
        yield state_dir, env
    finally:
        metalbus(state_dir, env, "down")
        shutil.rmtree(root, ignore_errors=True)


def live_components(state_dir: Path) -> list[str]:
    pid_files = [*(state_dir / "run").glob("*.pid"), state_dir / "postgres" / "postgres.pid-identity"]
    return sorted(path.name.split(".")[0] for path in pid_files if running_identity(path))


def rack_first_seen(api_port: str) -> dict[str, str]:
    body = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=10).json()
    return {s["service"]: s["first_seen"] for rack in body["racks"] for s in rack["services"]}


def assert_rack_serves_bootloaders(env: dict[str, str]) -> None:
    """The stack's rack-tftp serves the Debian bootloader over TFTP (curl) and HTTP, byte for byte."""
    debian = Path("/usr/lib/PXELINUX/lpxelinux.0").read_bytes()
    tftp_url = f"tftp://127.0.0.1:{env['METALBUS_STACK_TFTP_PORT']}/lpxelinux.0"
    fetched = subprocess.run(["curl", "-sS", "--max-time", "20", tftp_url], capture_output=True, timeout=30)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout == debian
    http_url = f"http://127.0.0.1:{env['METALBUS_STACK_RACK_HTTP_PORT']}/lpxelinux.0"
    assert httpx.get(http_url, timeout=10).content == debian


def test_up_status_health_down_and_up_again_reusing_the_data(stack_env: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = stack_env
    api_port = env["METALBUS_STACK_API_PORT"]

    started = metalbus(state_dir, env, "up")
    assert started.returncode == 0, started.stderr
    assert "stack up in" in started.stdout
    assert live_components(state_dir) == sorted(COMPONENTS)
    assert (state_dir / "rack-secret").stat().st_mode & 0o077 == 0, "the rack secret is readable by root only"

    status = metalbus(state_dir, env, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = json.loads(status.stdout)
    assert [row["name"] for row in rows] == COMPONENTS
    assert all(row["healthy"] and row["pid"] for row in rows), rows
    for row in rows:
        assert Path(row["log"]).is_relative_to(state_dir.resolve()) and Path(row["log"]).exists()

    health = httpx.get(f"http://127.0.0.1:{api_port}/api/v1/health", timeout=10)
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert [r["replica_id"] for r in body["replicas"]] == ["region-1", "region-2"]
    assert body["database"]["ok"]
    first_seen = rack_first_seen(api_port)
    assert sorted(first_seen) == ["rack-dhcp", "rack-power", "rack-proxy", "rack-tftp"]
    assert_rack_serves_bootloaders(env)

    again = metalbus(state_dir, env, "up")
    assert again.returncode == 1
    assert "already running" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    stopped = metalbus(state_dir, env, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert live_components(state_dir) == []
    assert metalbus(state_dir, env, "status").returncode == 1

    restarted = metalbus(state_dir, env, "up")
    assert restarted.returncode == 0, restarted.stderr
    assert rack_first_seen(api_port) == first_seen, "the second up reuses the first one's database"


def test_port_in_use_is_refused_in_one_line_and_nothing_starts(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = stack_env
    port = int(env["METALBUS_STACK_API_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        refused = metalbus(state_dir, env, "up")
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"metalbus: port {port} (api) is already in use on 127.0.0.1"
    assert live_components(state_dir) == []


def test_missing_binary_is_refused_in_one_line_and_nothing_starts(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = stack_env
    refused = metalbus(state_dir, env | {"METALBUS_STACK_NATS_SERVER_BINARY": "/nonexistent/nats-server"}, "up")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "metalbus: nats-server not found at /nonexistent/nats-server"
    assert live_components(state_dir) == []


def test_a_component_failing_mid_start_stops_everything_started_before_it(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = stack_env
    # An invalid region setting makes the first region replica exit at once, after nats and postgres started.
    broken = env | {"METALBUS_REGION_DATABASE_POOL_MAX": "0"}
    refused = metalbus(state_dir, broken, "up")
    assert refused.returncode == 1
    assert "region-1 exited with 1" in refused.stderr
    assert "METALBUS_REGION_DATABASE_POOL_MAX" in refused.stderr
    assert live_components(state_dir) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_state_dir_the_postgres_user_cannot_reach_still_works_through_a_link(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = stack_env
    private = state_dir.parent / "private"
    private.mkdir(mode=0o700)
    state_dir = private / "state"
    try:
        started = metalbus(state_dir, env, "up")
        assert started.returncode == 0, started.stderr
        link = state_dir / "postgres"
        assert link.is_symlink()
        assert link.resolve().is_relative_to(Path("/var/lib/metalbus/postgres"))
        assert (link / "data" / "PG_VERSION").exists()
        assert metalbus(state_dir, env, "status").returncode == 0
    finally:
        assert metalbus(state_dir, env, "down").returncode == 0
        if (state_dir / "postgres").is_symlink():
            shutil.rmtree((state_dir / "postgres").resolve(), ignore_errors=True)
    assert live_components(state_dir) == []
