"""The compose stack's NATS side, run for real without Docker: the credential files its one-shot `nats-config`
writes are the ones its containers mount, and its ha profile's three nats-server command lines form a JetStream
cluster that keeps a stream on three nodes."""

import asyncio
import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import nats
import pytest
from nats.js.api import StreamConfig
from typer.testing import CliRunner

from metalbus.cli.main import app
from metalbus.nats_auth import API_USER, rack_user
from metalbus.nats_credentials import auth_config_file, read_credential, role_file
from metalbus.stack.binaries import nats_server_binary
from metalbus.stack.processes import start_detached, stop_process
from metalbus.subjects import EVENTS_STREAM
from tests.conftest import free_port
from tests.unit.test_deploy_compose import (
    NATS_AUTH_DIR,
    active_services,
    compose_model,
    environment,
    module_of,
    settings_class,
)

CLUSTER_READY_S = 20.0


@pytest.fixture
def nats_auth_dir(tmp_path: Path) -> Path:
    """What the compose file's nats-config service writes, written here: its own command, another --out."""
    command = compose_model()["services"]["nats-config"]["command"]
    arguments = [str(tmp_path / "nats") if arg == NATS_AUTH_DIR else arg for arg in command[1:]]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    return tmp_path / "nats"


def test_nats_config_writes_every_file_the_containers_mount(nats_auth_dir: Path) -> None:
    for name, service in compose_model()["services"].items():
        for subpath in nats_auth_mounts(service).values():
            assert (nats_auth_dir / subpath).is_file(), f"{name} mounts {subpath}, which nats-config does not write"


def test_each_service_logs_in_to_nats_as_its_own_user(nats_auth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = {}
    for name, service in compose_model()["services"].items():
        module = module_of(service)
        if module is None:
            continue
        config = Path(environment(service)["METALBUS_CONFIG"])
        monkeypatch.setenv("METALBUS_CONFIG", str(nats_auth_dir / config.name))
        settings = settings_class(module)()
        users[name] = settings.nats_user  # type: ignore[attr-defined]
        assert settings.nats_password, name  # type: ignore[attr-defined]
    assert users["region-1"] == "region-1" and users["region-2"] == "region-2" and users["api"] == "api"
    assert {users[f"rack-{kind}"] for kind in ("dhcp", "tftp", "power", "proxy")} == {"rack-rack-1"}
    assert {users[f"rack-2-{kind}"] for kind in ("dhcp", "tftp", "power", "proxy")} == {"rack-rack-2"}


def nats_auth_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target → file in the nats-auth volume, for each file of it the container mounts."""
    return {
        volume["target"]: volume["volume"]["subpath"]
        for volume in service.get("volumes", [])
        if isinstance(volume, dict) and volume.get("source") == "nats-auth"
    }


def nats_user_of(service: dict[str, Any]) -> str:
    """The NATS user a container should run as, by the roles of metalbus.nats_auth."""
    env = environment(service)
    if module_of(service) == "metalbus_region":
        return env["METALBUS_REGION_REPLICA_ID"]
    if module_of(service) == "metalbus_api":
        return API_USER
    return rack_user(next(value for name, value in env.items() if name.endswith("_RACK_ID")))


def test_each_container_mounts_only_its_own_credentials_and_reads_them_as_metalbus_config() -> None:
    services = compose_model()["services"]
    for name, service in services.items():
        if module_of(service) is None:
            continue
        config = role_file(Path(NATS_AUTH_DIR), nats_user_of(service))
        assert environment(service)["METALBUS_CONFIG"] == str(config), name
        assert nats_auth_mounts(service) == {str(config): config.name}, name  # this one file, nothing else
    for name in ("nats", "nats-1", "nats-2", "nats-3"):
        config = auth_config_file(Path(NATS_AUTH_DIR))
        assert nats_auth_mounts(services[name]) == {str(config): config.name}, name


def on_loopback(command: list[str], root: Path, ports: dict[str, dict[str, int]], config: Path) -> list[str]:
    """A node's compose command with the compose network's addresses, ports and paths swapped for local ones."""
    name = command[command.index("--server_name") + 1]
    local_value = {
        "--addr": "127.0.0.1",
        "--port": str(ports[name]["client"]),
        "--http_port": str(ports[name]["monitor"]),
        "--store_dir": str(root / name),
        "--config": str(config),
        "--cluster": f"nats://127.0.0.1:{ports[name]['cluster']}",
    }
    local = [str(nats_server_binary())]
    for previous, arg in itertools.pairwise(["", *command[1:]]):
        if previous == "--routes":
            hosts = [urlsplit(route).hostname or "" for route in arg.split(",")]
            local.append(",".join(f"nats://127.0.0.1:{ports[host]['cluster']}" for host in hosts))
        else:
            local.append(local_value.get(previous, arg))
    return local


@pytest.fixture
def ha_cluster(tmp_path: Path, nats_auth_dir: Path) -> Iterator[dict[str, dict[str, int]]]:
    services: dict[str, Any] = active_services(compose_model(), "ha")
    nodes = sorted(name for name in services if re.fullmatch(r"nats-\d", name))
    ports = {node: {"client": free_port(), "monitor": free_port(), "cluster": free_port()} for node in nodes}
    pid_files = []
    try:
        for node in nodes:
            argv = on_loopback(services[node]["command"], tmp_path, ports, nats_auth_dir / "nats-auth.conf")
            pid_files.append(tmp_path / f"{node}.pid")
            start_detached(argv, log_path=tmp_path / f"{node}.log", pid_path=pid_files[-1], env=dict(os.environ))
        yield ports
    finally:
        for pid_file in pid_files:
            stop_process(pid_file)


async def wait_until_healthy(services: dict[str, Any], ports: dict[str, dict[str, int]]) -> None:
    """Until each node passes its compose health check (that URL, on the node's local monitor port)."""
    deadline = asyncio.get_running_loop().time() + CLUSTER_READY_S
    async with httpx.AsyncClient(timeout=1.0) as client:
        for node, node_ports in ports.items():
            url = urlsplit(services[node]["healthcheck"]["test"][-1])
            local = url._replace(netloc=f"127.0.0.1:{node_ports['monitor']}").geturl()
            while True:
                try:
                    if (await client.get(local)).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, f"{node} not healthy: {local}"
                await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_ha_profile_nodes_form_a_cluster_that_keeps_the_events_stream_on_three_nodes(
    ha_cluster: dict[str, dict[str, int]], nats_auth_dir: Path
) -> None:
    await wait_until_healthy(active_services(compose_model(), "ha"), ha_cluster)
    region = read_credential(nats_auth_dir, "region-1")
    assert region is not None
    client = await nats.connect(
        f"nats://127.0.0.1:{ha_cluster['nats-1']['client']}",
        user=region.user,
        password=region.password,
        inbox_prefix=region.inbox_prefix,
        connect_timeout=2,
        max_reconnect_attempts=0,
    )
    try:
        jetstream = client.jetstream(timeout=5.0)
        config = StreamConfig(name=EVENTS_STREAM.name, subjects=list(EVENTS_STREAM.subjects), num_replicas=3)
        info = await jetstream.add_stream(config)
        ack = await jetstream.publish("events.machine.abc123", b"{}")
    finally:
        await client.close()
    assert info.config.num_replicas == 3
    assert info.cluster is not None and info.cluster.replicas is not None
    assert sorted([info.cluster.leader, *(peer.name for peer in info.cluster.replicas)]) == sorted(ha_cluster)
    assert (ack.stream, ack.seq) == (EVENTS_STREAM.name, 1)
