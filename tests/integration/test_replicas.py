"""Two region processes share the work; kill -9 of one during a burst loses nothing and applies nothing twice."""

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from metalbus.bus import Bus
from metalbus.contracts.errors import Timeout, Unavailable
from metalbus.contracts.health import ReplicaRollCall
from metalbus.contracts.machines import Machine, MachineCreate
from metalbus.stack.processes import running_identity, start_detached, stop_process
from metalbus.subjects import MACHINE_CREATE, REGION_ROLL_CALL
from tests.conftest import NatsServer

pytestmark = pytest.mark.slow

BURST = 300


@pytest.fixture
def two_region_processes(nats_server: NatsServer, database_dsn: str, tmp_path: Path) -> Iterator[list[Path]]:
    pid_files = []
    for replica in ("proc-1", "proc-2"):
        env = dict(os.environ) | {
            "METALBUS_REGION_NATS_URL": nats_server.url,
            "METALBUS_REGION_DATABASE_DSN": database_dsn,
            "METALBUS_REGION_REPLICA_ID": replica,
        }
        pid_file = tmp_path / f"{replica}.pid"
        start_detached(
            [sys.executable, "-m", "metalbus_region"], log_path=tmp_path / f"{replica}.log", pid_path=pid_file, env=env
        )
        pid_files.append(pid_file)
    try:
        yield pid_files
    finally:
        for pid_file in pid_files:
            stop_process(pid_file)


class Progress:
    """Counts answered commands and says when a given share of the burst is done."""

    def __init__(self, threshold: int) -> None:
        self.answered = 0
        self.threshold = threshold
        self.reached = asyncio.Event()

    def one_more(self) -> None:
        self.answered += 1
        if self.answered >= self.threshold:
            self.reached.set()


async def create_until_answered(bus: Bus, index: int, progress: Progress) -> Machine:
    """What a careful client does: repeat the same keyed command until some replica answers it."""
    request = MachineCreate(
        boot_mac=f"52:54:00:00:{index // 256:02x}:{index % 256:02x}", idempotency_key=f"burst-{index:04d}"
    )
    for _ in range(20):
        try:
            machine = await bus.request(MACHINE_CREATE, request, timeout=2)
            progress.one_more()
            return machine
        except (Timeout, Unavailable):
            await asyncio.sleep(0.1)
    raise AssertionError(f"request {index} never answered")


async def test_kill_9_of_a_replica_during_a_burst_loses_nothing_and_applies_nothing_twice(
    two_region_processes: list[Path], bus: Bus, database_dsn: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while len(await bus.gather(REGION_ROLL_CALL, ReplicaRollCall(), window=0.3)) < 2:
        assert loop.time() < deadline, "both replicas answer the roll call"
    await create_until_answered(bus, BURST, Progress(1))  # both replicas have migrated and serve
    progress = Progress(threshold=BURST // 5)
    answered_at_kill = -1

    async def kill_one_midway() -> None:
        nonlocal answered_at_kill
        await progress.reached.wait()
        victim = running_identity(two_region_processes[0])
        assert victim is not None
        os.kill(victim.pid, signal.SIGKILL)
        answered_at_kill = progress.answered

    burst = (create_until_answered(bus, i, progress) for i in range(BURST))
    results = await asyncio.gather(kill_one_midway(), *burst)
    machines: list[Machine] = list(results[1:])
    assert answered_at_kill < BURST * 0.9, f"the kill landed mid-burst ({answered_at_kill} of {BURST} answered)"

    for _ in range(100):  # SIGKILL lands asynchronously
        if running_identity(two_region_processes[0]) is None:
            break
        await asyncio.sleep(0.05)
    assert running_identity(two_region_processes[0]) is None, "the victim really died"
    assert len({m.system_id for m in machines}) == BURST, "every command answered, each with its own machine"
    conn = await asyncpg.connect(database_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM machines") == BURST + 1
        created_events = await conn.fetchval(
            "SELECT count(*) FROM events WHERE subject LIKE 'events.machine.%' AND payload->>'from_status' IS NULL"
        )
        assert created_events == BURST + 1, "one creation event per machine: nothing applied twice"
        assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'burst-%'") == BURST + 1
    finally:
        await conn.close()
