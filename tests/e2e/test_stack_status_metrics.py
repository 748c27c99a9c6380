"""`metalbus up` gives every region replica and rack service a metrics port, and `metalbus status` summarises what
each component's /metrics says (the api's through its own port, with an API key)."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, world_readable_temp_dir

pytestmark = pytest.mark.e2e

METRICS_COMPONENTS = ["region-1", "region-2", "rack-dhcp", "rack-tftp", "rack-power", "rack-proxy"]


def metalbus(state_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metalbus.cli.main", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on loopback now (a bounded search)."""
    for _ in range(50):
        base = random.randrange(20000, 60000)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(sockets):
                probe.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for probe in sockets:
                probe.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


@pytest.fixture
def stack_env() -> Iterator[tuple[Path, dict[str, str]]]:
    root = world_readable_temp_dir("metalbus-e2e-metrics-")
    names = ["NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "TFTP_PORT", "RACK_HTTP_PORT"]
    names += ["DHCP_PORT", "DNS_PORT", "APT_PROXY_PORT", "SYSLOG_PORT"]
    env = os.environ | {f"METALBUS_STACK_{name}": str(free_port()) for name in names}
    env["METALBUS_STACK_METRICS_PORT_BASE"] = str(free_port_run(len(METRICS_COMPONENTS)))
    env["METALBUS_STACK_HEARTBEAT_INTERVAL_S"] = "0.5"
    state_dir = root / "state"
    try:
        yield state_dir, env
    finally:
        metalbus(state_dir, env, "down")
        shutil.rmtree(root, ignore_errors=True)


def metric_names(port: int) -> set[str]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}


def test_status_summarises_the_metrics_of_the_region_the_api_and_every_rack_service(
    stack_env: tuple[Path, dict[str, str]],
) -> None:
    state_dir, env = stack_env
    started = metalbus(state_dir, env, "up")
    assert started.returncode == 0, started.stdout + started.stderr
    base = int(env["METALBUS_STACK_METRICS_PORT_BASE"])
    for offset, component in enumerate(METRICS_COMPONENTS):  # each on its port, in start order
        service = "rack_" + component.removeprefix("rack-") if component.startswith("rack-") else "region"
        names = metric_names(base + offset)
        assert names and all(name.startswith(f"metalbus_{service}_") for name in names), (component, names)

    without_key = json.loads(metalbus(state_dir, env, "status", "--json").stdout)
    [api_row] = [row for row in without_key if row["name"] == "api"]
    assert api_row["metrics"] is None and "METALBUS_API_KEY" in api_row["metrics_error"]

    key = metalbus(state_dir, env, "admin", "create-key", "--name", "status-metrics")
    assert key.returncode == 0, key.stderr
    status = metalbus(state_dir, env | {"METALBUS_API_KEY": key.stdout.strip()}, "status", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    for name in [*METRICS_COMPONENTS, "api"]:
        assert rows[name]["metrics_error"] is None, rows[name]
    assert rows["region-1"]["metrics"]["requests"] + rows["region-2"]["metrics"]["requests"] >= 1  # status's own
    assert set(rows["region-1"]["metrics"]) == {"requests", "errors", "outbox_backlog", "events_published"}
    assert rows["api"]["metrics"]["requests"] >= 1  # up's health checks
    assert set(rows["rack-dhcp"]["metrics"]) == {"received", "acks", "dropped"}
    assert rows["rack-power"]["metrics"]["poll_rounds"] >= 0
    assert set(rows["rack-tftp"]["metrics"]) == {"tftp_transfers", "http_requests"}
    assert set(rows["rack-proxy"]["metrics"]) == {"dns_queries", "syslog_received", "apt_requests"}
    assert rows["nats"]["metrics"] is None and rows["postgres"]["metrics"] is None

    table = metalbus(state_dir, env, "status")
    assert table.returncode == 0, table.stderr
    assert "outbox_backlog" in table.stdout and "dns_queries" in table.stdout
