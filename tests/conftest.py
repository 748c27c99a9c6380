"""Fixtures that start real servers with the project's own launch code: nats-server and PostgreSQL."""

import asyncio
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalbus.bus import Bus, ConnectOptions
from metalbus.stack.nats import nats_server_argv
from metalbus.stack.postgres import PostgresCluster
from metalbus.stack.processes import running_identity, start_detached, stop_process


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def world_readable_temp_dir(prefix: str) -> Path:
    """A temp directory the postgres user can reach (pytest's tmp_path lives under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@dataclass
class NatsServer:
    """A real nats-server with JetStream on a free loopback port; can be killed and restarted."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "nats.pid"

    def start(self) -> None:
        argv = nats_server_argv(host="127.0.0.1", port=self.port, store_dir=self.root / "store")
        start_detached(argv, log_path=self.root / "nats.log", pid_path=self.pid_file, env=dict(os.environ))
        wait_for_port(self.port)

    def kill(self) -> None:
        stop_process(self.pid_file, stop_signal=signal.SIGKILL)

    def stop(self) -> None:
        stop_process(self.pid_file)

    @property
    def running(self) -> bool:
        return running_identity(self.pid_file) is not None

    def options(self, name: str = "test", **overrides: float) -> ConnectOptions:
        return ConnectOptions(servers=(self.url,), name=name, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(root=tmp_path, port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_server.options("test-client"))
    try:
        yield connected
    finally:
        await connected.drain()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    root = world_readable_temp_dir("metalbus-test-pg-")
    cluster = PostgresCluster(root=root / "cluster", port=free_port())
    cluster.initialise()
    cluster.start()
    try:
        asyncio.run(cluster.wait_ready())
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def database_dsn(postgres_cluster: PostgresCluster) -> str:
    """A brand-new empty database for one test."""
    return await postgres_cluster.create_database(f"test_{uuid.uuid4().hex[:12]}")
