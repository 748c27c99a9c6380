"""Benchmark: DHCP offer+commit pairs per second through NATS into PostgreSQL, one region replica versus two.

Its one job: measure how lease allocation scales when a second region replica joins the queue group, and print
whether two replicas are at least as fast as one.

    .venv/bin/python bench/region_leases.py --quick     # ~20 s
    .venv/bin/python bench/region_leases.py             # ~75 s

Everything runs on loopback with the project's own launch code: a private nats-server (JetStream on), a private
PostgreSQL cluster (as the ``postgres`` user when run as root) and each region replica as its own process
(``python -m metalbus_region``). Every session starts its replicas on a fresh database, so both configurations
allocate from equally empty pools: ``--subnets`` subnets of a /20 each, each worker asking on one subnet's link
with a fresh MAC per pair, half the workers as rack-1 and half as rack-2. A pair is a LEASE_OFFER then a
LEASE_COMMIT of the offered address by the same MAC; both are full transactions with their outbox events.
Sessions run 1, 2 (quick) or 1, 2, 2, 1 replicas (full) so drift over the run hits both sides alike; the median of
the rounds is reported. Every process the benchmark starts is stopped by its pid file, whatever ends the run.
The last line printed is ``two-replica speed-up: <X.XX>x (goal >= 1.0x) meets`` (or ``short``).
"""

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import FrameType

from metalbus.bus import Bus, ConnectOptions
from metalbus.contracts.errors import MetalbusError, Unavailable
from metalbus.contracts.health import HealthQuery
from metalbus.contracts.leases import LeaseCommitRequest, LeaseOfferRequest, SubnetCreate
from metalbus.stack.nats import nats_server_argv
from metalbus.stack.postgres import PostgresCluster
from metalbus.stack.processes import start_detached, stop_process
from metalbus.subjects import LEASE_COMMIT, LEASE_OFFER, REGION_HEALTH, SUBNET_CREATE

GOAL_SPEED_UP = 1.0
HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 10.0
READY_DEADLINE_S = 60.0
POOL_BASE = IPv4Network("10.64.0.0/12")
SUBNET_PREFIX = 20


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout_s:g}s")


def _sigterm_as_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# -- the processes this benchmark owns ----------------------------------------------------------------------
@dataclass
class OwnedProcesses:
    """Pid files of every process started, each with the signal that stops it; ``stop_all`` stops them newest
    first (region replicas, then PostgreSQL, then nats-server)."""

    stop_signals: dict[Path, int] = field(default_factory=dict)

    def started(self, pid_file: Path, stop_signal: int = signal.SIGTERM) -> None:
        self.stop_signals[pid_file] = stop_signal

    def stop(self, pid_file: Path) -> None:
        stop_process(pid_file, stop_signal=self.stop_signals.pop(pid_file), grace_s=30)

    def stop_all(self) -> None:
        for pid_file in reversed(list(self.stop_signals)):
            with suppress(OSError):
                self.stop(pid_file)


@dataclass
class Infrastructure:
    root: Path
    nats_url: str
    cluster: PostgresCluster
    owned: OwnedProcesses


@contextmanager
def infrastructure() -> Iterator[Infrastructure]:
    """nats-server and PostgreSQL in a world-readable temporary directory (PostgreSQL may run as ``postgres``);
    both stopped and the directory removed on the way out."""
    root = Path(tempfile.mkdtemp(prefix="metalbus-bench-leases-", dir="/tmp"))
    root.chmod(0o755)
    owned = OwnedProcesses()
    cluster = PostgresCluster(root=root / "cluster", port=free_port())
    try:
        nats_port = free_port()
        nats_pid = root / "nats.pid"
        argv = nats_server_argv(host=HOST, port=nats_port, store_dir=root / "nats")
        start_detached(argv, log_path=root / "nats.log", pid_path=nats_pid, env=dict(os.environ))
        owned.started(nats_pid)
        wait_for_port(nats_port)
        cluster.initialise()
        cluster.start()
        owned.started(cluster.pid_file, signal.SIGINT)  # PostgreSQL's fast shutdown, as PostgresCluster.stop
        asyncio.run(cluster.wait_ready())
        yield Infrastructure(root, f"nats://{HOST}:{nats_port}", cluster, owned)
    finally:
        owned.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def start_replicas(infra: Infrastructure, dsn: str, count: int, session: int) -> list[Path]:
    pid_files = []
    for index in range(1, count + 1):
        replica_id = f"bench-s{session}-r{index}"
        env = dict(os.environ) | {
            "METALBUS_REGION_NATS_URL": infra.nats_url,
            "METALBUS_REGION_DATABASE_DSN": dsn,
            "METALBUS_REGION_REPLICA_ID": replica_id,
            "METALBUS_REGION_LOG_LEVEL": "warning",
        }
        pid_file = infra.root / f"{replica_id}.pid"
        start_detached(
            [sys.executable, "-m", "metalbus_region"],
            log_path=infra.root / f"{replica_id}.log",
            pid_path=pid_file,
            env=env,
        )
        infra.owned.started(pid_file)
        pid_files.append(pid_file)
    return pid_files


# -- the workload -------------------------------------------------------------------------------------------
def bench_subnets(count: int) -> list[SubnetCreate]:
    subnets = []
    for network in itertools.islice(POOL_BASE.subnets(new_prefix=SUBNET_PREFIX), count):
        first = network.network_address
        subnets.append(
            SubnetCreate(
                cidr=network,
                gateway=first + 1,
                dns_servers=[first + 2],
                dynamic_start=first + 10,
                dynamic_end=network.broadcast_address - 1,
                lease_time_s=3600,
            )
        )
    return subnets


def mac_of(number: int) -> str:
    return ":".join(f"{byte:02x}" for byte in (0x02, 0x00, *number.to_bytes(4, "big")))


@dataclass
class Round:
    pairs: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.pairs / self.seconds


async def wait_until_ready(bus: Bus, replicas: int) -> None:
    """Until as many distinct replicas have answered health with their database migrated and reachable."""
    ready: set[str] = set()
    deadline = time.monotonic() + READY_DEADLINE_S
    while len(ready) < replicas:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sorted(ready)} of {replicas} replicas became ready")
        with suppress(Unavailable):
            health = await bus.request(REGION_HEALTH, HealthQuery(), timeout=2)
            if health.database_reachable:
                ready.add(health.replica_id)
        await asyncio.sleep(0.02)


async def measure(bus: Bus, links: list[IPv4Address], macs: Iterator[int], workers: int, seconds: float) -> Round:
    pairs = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal pairs, errors
        rack_id, link = f"rack-{index % 2 + 1}", links[index % len(links)]
        while time.perf_counter() < deadline:
            mac = mac_of(next(macs))
            try:
                offer = await bus.request(
                    LEASE_OFFER,
                    LeaseOfferRequest(rack_id=rack_id, mac=mac, link_address=link),
                    timeout=REQUEST_TIMEOUT_S,
                )
                await bus.request(
                    LEASE_COMMIT,
                    LeaseCommitRequest(rack_id=rack_id, mac=mac, ip=offer.lease.ip),
                    timeout=REQUEST_TIMEOUT_S,
                )
            except MetalbusError:
                errors += 1
            else:
                pairs += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(workers)))
    return Round(pairs, errors, time.perf_counter() - started)


async def session(
    infra: Infrastructure, replicas: int, number: int, args: argparse.Namespace, macs: Iterator[int]
) -> list[Round]:
    """A fresh database, ``replicas`` region processes, a warm-up, then the measured rounds."""
    dsn = await infra.cluster.create_database(f"bench_{uuid.uuid4().hex[:12]}")
    pid_files = start_replicas(infra, dsn, replicas, number)
    bus = await Bus.connect(ConnectOptions(servers=(infra.nats_url,), name="bench-leases"))
    try:
        await wait_until_ready(bus, replicas)
        links = []
        for create in bench_subnets(args.subnets):
            await bus.request(SUBNET_CREATE, create, timeout=REQUEST_TIMEOUT_S)
            links.append(create.cidr.network_address + 2)
        await measure(bus, links, macs, args.workers, args.warmup)
        rounds = []
        for index in range(args.rounds):
            measured = await measure(bus, links, macs, args.workers, args.seconds)
            rounds.append(measured)
            print(
                f"  session {number} ({replicas} replica{'s' if replicas > 1 else ''}) round {index + 1}/"
                f"{args.rounds}: {measured.rate:,.0f} pairs/s ({measured.pairs} pairs, {measured.errors} errors)",
                flush=True,
            )
        return rounds
    finally:
        with suppress(Exception):
            await asyncio.wait_for(bus.drain(), 5)
        for pid_file in pid_files:
            infra.owned.stop(pid_file)


async def run(infra: Infrastructure, args: argparse.Namespace) -> dict[int, list[Round]]:
    order = [1, 2] if args.quick else [1, 2, 2, 1]
    macs = itertools.count(1)
    results: dict[int, list[Round]] = {1: [], 2: []}
    for number, replicas in enumerate(order, start=1):
        results[replicas] += await session(infra, replicas, number, args, macs)
    return results


def report(results: dict[int, list[Round]]) -> None:
    one, two = (statistics.median(r.rate for r in results[n]) for n in (1, 2))
    errors = sum(r.errors for rounds in results.values() for r in rounds)
    print()
    print(f"{'region replicas':<18}{'offer+commit pairs/s (median)':>32}{'rounds':>8}")
    for replicas, rate in ((1, one), (2, two)):
        print(f"{replicas:<18}{rate:>32,.0f}{len(results[replicas]):>8}")
    print(f"errors during measured rounds: {errors}")
    speed_up = two / one
    verdict = "meets" if speed_up >= GOAL_SPEED_UP and errors == 0 else "short"
    print(f"two-replica speed-up: {speed_up:.2f}x (goal >= {GOAL_SPEED_UP:.1f}x) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="sessions 1, 2 replicas, short rounds (~20 s)")
    parser.add_argument("--rounds", type=int, help="measured rounds per session (default 3, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per round (default 5, quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per session (default 2, quick 1)")
    parser.add_argument("--workers", type=int, default=32, help="concurrent clients (offer+commit in a loop)")
    parser.add_argument("--subnets", type=int, default=8, help=f"subnets (/{SUBNET_PREFIX} each) to spread over")
    args = parser.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup < 0 or args.workers < 1:
        raise SystemExit("rounds, seconds and workers must be positive, warm-up not negative")
    if not 1 <= args.subnets <= 2 ** (SUBNET_PREFIX - POOL_BASE.prefixlen):
        raise SystemExit(f"subnets must be between 1 and {2 ** (SUBNET_PREFIX - POOL_BASE.prefixlen)}")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _sigterm_as_exit)
    started = time.monotonic()
    try:
        with infrastructure() as infra:
            print(
                f"bench/region_leases.py: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
                f"{args.workers} workers over {args.subnets} subnets, {args.rounds} rounds x {args.seconds:g} s "
                "per session",
                flush=True,
            )
            results = asyncio.run(run(infra, args))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(f"(took {time.monotonic() - started:.0f} s)")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
