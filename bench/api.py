"""Benchmark: latency of the HTTP API with 10,000 machines in the database, under a bounded background load.

Its one job: measure p50/p99 of three operator calls end to end (HTTP → api → NATS → region → PostgreSQL → back)
and say whether reading one machine stays under 10 ms at the 99th percentile.

    .venv/bin/python bench/api.py --quick     # ~15 s
    .venv/bin/python bench/api.py             # ~30 s

Everything runs on loopback with the project's own launch code (``bench/region_leases.py``'s infrastructure): a
private nats-server and PostgreSQL, one region process (``python -m metalbus_region``) and one api process
(``python -m metalbus_api``). Before they start, the migrations are applied and ``--machines`` machines are inserted
with one ``INSERT … SELECT generate_series`` (a quarter NEW, manual power; the rest READY or FAILED). An API key is
made over NATS (``region.apikeys.create``).

Each operation is measured by one sequential probe client (keep-alive, one request in flight) while a background
load runs in a separate process: ``--clients`` concurrent clients on loopback, paced to ``--background-rate``
requests/s in total (three GETs of one machine for every page of 100), for as long as the probe runs. Operations:

- ``GET /api/v1/machines?limit=100&offset=<random>`` — a page at a varied offset;
- ``GET /api/v1/machines/{id}`` — a random one of the machines;
- ``POST /api/v1/machines/{id}/commission`` — each on a different NEW machine with manual power.

The default background rate, 100 requests/s, is about a third of what the api and one region sustain with that mix
on a 2-core machine (~340 requests/s, everything on the same two cores); near saturation (``--background-rate 300``)
the single-machine p99 measured ~20 ms instead of ~8 ms.

Every process started is stopped by its pid, whatever ends the run. The last line printed is
``GET one machine p99: <X.X> ms (goal < 10 ms) meets`` (or ``short``).
"""

import argparse
import asyncio
import math
import multiprocessing
import multiprocessing.synchronize
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from types import FrameType

import asyncpg
import httpx

from metalbus.bus import Bus, ConnectOptions
from metalbus.contracts.apikeys import ApiKeyCreate
from metalbus.db.migrate import migrate_dsn
from metalbus.logging import configure_logging
from metalbus.stack.processes import start_detached
from metalbus.subjects import API_KEY_CREATE

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from region_leases import (
    HOST,
    Infrastructure,
    free_port,
    infrastructure,
    wait_for_port,
    wait_until_ready,
)

GOAL_GET_ONE_P99_MS = 10.0
PAGE = 100
READY_DEADLINE_S = 60.0
REQUEST_TIMEOUT_S = 30.0

INSERT_MACHINES = """
INSERT INTO machines (system_id, hostname, status, architecture, boot_mac, power_type, power_parameters)
SELECT 'b' || lpad(to_hex(i), 5, '0'),
       'bench-' || lpad(i::text, 6, '0'),
       (ARRAY['new', 'ready', 'ready', 'failed_commissioning'])[i % 4 + 1],
       (ARRAY['amd64/bios', 'amd64/uefi', 'arm64/uefi'])[i % 3 + 1],
       ('020000' || lpad(to_hex(i), 6, '0'))::macaddr,
       'manual',
       '{}'::jsonb
  FROM generate_series(0, $1 - 1) AS i
"""


def system_id_of(number: int) -> str:
    return f"b{number:05x}"


def new_machine_ids(count: int) -> list[str]:
    """The machines INSERT_MACHINES made NEW (every fourth)."""
    return [system_id_of(number) for number in range(0, count, 4)]


def _sigterm_as_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# -- set-up ---------------------------------------------------------------------------------------------------
async def seed_database(dsn: str, machines: int) -> float:
    """Migrate, then insert the machines in one statement; returns the seconds the insert took."""
    await migrate_dsn(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute(INSERT_MACHINES, machines)
        seconds = time.perf_counter() - started
        await conn.execute("ANALYZE machines")
        return seconds
    finally:
        await conn.close()


def start_services(infra: Infrastructure, dsn: str, api_port: int) -> None:
    region_env = {
        "METALBUS_REGION_NATS_URL": infra.nats_url,
        "METALBUS_REGION_DATABASE_DSN": dsn,
        "METALBUS_REGION_REPLICA_ID": "bench-api-region",
        "METALBUS_REGION_LOG_LEVEL": "warning",
    }
    api_env = {
        "METALBUS_API_NATS_URL": infra.nats_url,
        "METALBUS_API_HOST": HOST,
        "METALBUS_API_PORT": str(api_port),
        "METALBUS_API_LOG_LEVEL": "warning",
    }
    for name, module, env in (("region", "metalbus_region", region_env), ("api", "metalbus_api", api_env)):
        pid_file = infra.root / f"{name}.pid"
        start_detached(
            [sys.executable, "-m", module],
            log_path=infra.root / f"{name}.log",
            pid_path=pid_file,
            env=dict(os.environ) | env,
        )
        infra.owned.started(pid_file)


async def region_ready_and_key(nats_url: str) -> str:
    bus = await Bus.connect(ConnectOptions(servers=(nats_url,), name="bench-api"))
    try:
        await wait_until_ready(bus, 1)
        created = await bus.request(API_KEY_CREATE, ApiKeyCreate(name="bench-api"), timeout=10)
        return created.key
    finally:
        await bus.close()


def wait_for_api(url: str, key: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=5) as http:
        while True:
            try:
                if http.get("/api/v1/machines", params={"limit": 1}).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the api at {url} did not answer within {READY_DEADLINE_S:g}s")
            time.sleep(0.1)


# -- the background load (its own process, so it does not share the probe's CPU time slice) --------------------
@dataclass(frozen=True)
class LoadSpec:
    url: str
    key: str
    machines: int
    clients: int
    rate: float


def background_load(
    spec: LoadSpec, stop: multiprocessing.synchronize.Event, report: "Queue[tuple[int, int, float]]"
) -> None:
    report.put(asyncio.run(_paced_clients(spec, stop)))


async def _paced_clients(spec: LoadSpec, stop: multiprocessing.synchronize.Event) -> tuple[int, int, float]:
    done = errors = 0
    loop = asyncio.get_running_loop()
    interval = spec.clients / spec.rate
    limits = httpx.Limits(max_connections=spec.clients, max_keepalive_connections=spec.clients)
    headers = {"Authorization": f"Bearer {spec.key}"}

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal done, errors
        rng = random.Random(index)
        next_at = loop.time() + rng.random() * interval
        request_number = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            request_number += 1
            try:
                if request_number % 4 == 0:
                    offset = rng.randrange(0, max(1, spec.machines - PAGE))
                    response = await http.get("/api/v1/machines", params={"limit": PAGE, "offset": offset})
                else:
                    response = await http.get(f"/api/v1/machines/{system_id_of(rng.randrange(spec.machines))}")
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            done += 1
            errors += not ok

    started = loop.time()
    async with httpx.AsyncClient(base_url=spec.url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        await asyncio.gather(*(client(index, http) for index in range(spec.clients)))
    return done, errors, loop.time() - started


# -- the probe ------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    name: str
    latencies_ms: list[float]
    errors: int
    background_requests: int = 0
    background_errors: int = 0
    background_seconds: float = 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    @property
    def background_rate(self) -> float:
        return self.background_requests / self.background_seconds if self.background_seconds else 0.0


def probe(http: httpx.Client, name: str, requests: list[Callable[[httpx.Client], httpx.Response]], ok: int) -> Measured:
    latencies, errors = [], 0
    for send in requests:
        started = time.perf_counter()
        try:
            status = send(http).status_code
        except httpx.HTTPError:
            status = 0
        latencies.append((time.perf_counter() - started) * 1000)
        errors += status != ok
    return Measured(name, latencies, errors)


def under_load(spec: LoadSpec, measure: Callable[[], Measured]) -> Measured:
    """Run ``measure`` while the background load runs in its own process; that process is always stopped."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    report: Queue[tuple[int, int, float]] = context.Queue()
    worker = context.Process(target=background_load, args=(spec, stop, report), name="bench-api-load")
    worker.start()
    try:
        time.sleep(1.0)  # the worker imports httpx and reaches its pace before the probe starts
        measured = measure()
        stop.set()
        done, errors, seconds = report.get(timeout=REQUEST_TIMEOUT_S + 10)
        worker.join(timeout=10)
    finally:
        if worker.is_alive():
            worker.terminate()
            worker.join(timeout=5)
    measured.background_requests, measured.background_errors, measured.background_seconds = done, errors, seconds
    return measured


def run_probes(url: str, key: str, args: argparse.Namespace) -> list[Measured]:
    spec = LoadSpec(url=url, key=key, machines=args.machines, clients=args.clients, rate=args.background_rate)
    rng = random.Random(42)
    pages = [rng.randrange(0, args.machines - PAGE) for _ in range(args.pages)]
    ones = [system_id_of(rng.randrange(args.machines)) for _ in range(args.gets)]
    fresh = new_machine_ids(args.machines)[: args.commissions]
    if len(fresh) < args.commissions:
        raise SystemExit(f"only {len(fresh)} NEW machines for {args.commissions} commissions: raise --machines")
    results = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        for system_id in ones[: args.gets // 5]:  # warm-up: connections, caches, the key check
            http.get(f"/api/v1/machines/{system_id}")
        plans: list[tuple[str, list[Callable[[httpx.Client], httpx.Response]], int]] = [
            (
                f"GET /api/v1/machines?limit={PAGE}&offset=<varied>",
                [lambda h, o=o: h.get("/api/v1/machines", params={"limit": PAGE, "offset": o}) for o in pages],
                200,
            ),
            ("GET /api/v1/machines/{id}", [lambda h, s=s: h.get(f"/api/v1/machines/{s}") for s in ones], 200),
            (
                "POST /api/v1/machines/{id}/commission",
                [lambda h, s=s: h.post(f"/api/v1/machines/{s}/commission", json={}) for s in fresh],
                200,
            ),
        ]
        for name, requests, ok in plans:
            measured = under_load(spec, lambda name=name, requests=requests, ok=ok: probe(http, name, requests, ok))
            results.append(measured)
            print(
                f"  {name}: p50 {measured.percentile(0.5):.1f} ms, p99 {measured.percentile(0.99):.1f} ms "
                f"({len(measured.latencies_ms)} requests; background {measured.background_rate:.0f} req/s)",
                flush=True,
            )
    return results


def report(results: list[Measured], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'operation':<48}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
        f"{'background req/s':>18}{'bg errors':>10}"
    )
    for m in results:
        print(
            f"{m.name:<48}{len(m.latencies_ms):>9}{m.percentile(0.5):>9.1f}{m.percentile(0.99):>9.1f}"
            f"{max(m.latencies_ms):>9.1f}{m.errors:>8}{m.background_rate:>18.0f}{m.background_errors:>10}"
        )
    print(
        f"({args.machines:,} machines; background: {args.clients} clients paced to {args.background_rate:g} req/s, "
        "3 GET one : 1 GET page of 100; probe: 1 request in flight)"
    )
    get_one = next(m for m in results if m.name == "GET /api/v1/machines/{id}")
    p99 = get_one.percentile(0.99)
    verdict = "meets" if p99 < GOAL_GET_ONE_P99_MS and get_one.errors == 0 else "short"
    print(f"GET one machine p99: {p99:.1f} ms (goal < {GOAL_GET_ONE_P99_MS:g} ms) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer requests per operation (~15 s in all)")
    parser.add_argument("--machines", type=int, default=10_000, help="machines in the database")
    parser.add_argument("--pages", type=int, help="page reads measured (default 1000, quick 200)")
    parser.add_argument("--gets", type=int, help="single-machine reads measured (default 5000, quick 1000)")
    parser.add_argument("--commissions", type=int, help="commission calls measured (default 1000, quick 200)")
    parser.add_argument("--clients", type=int, default=8, help="background clients")
    parser.add_argument("--background-rate", type=float, default=100.0, help="background requests/s, all clients")
    args = parser.parse_args()
    args.pages = args.pages or (200 if args.quick else 1000)
    args.gets = args.gets or (1000 if args.quick else 5000)
    args.commissions = args.commissions or (200 if args.quick else 1000)
    if min(args.pages, args.gets, args.commissions, args.clients) < 1 or args.background_rate <= 0:
        raise SystemExit("counts, clients and the background rate must be positive")
    if args.machines < 2 * PAGE:
        raise SystemExit(f"--machines must be at least {2 * PAGE}")
    return args


def main() -> int:
    args = parse_args()
    configure_logging("warning")
    signal.signal(signal.SIGTERM, _sigterm_as_exit)
    started = time.monotonic()
    try:
        with infrastructure() as infra:
            print(
                f"bench/api.py: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.machines:,} machines",
                flush=True,
            )
            dsn = asyncio.run(infra.cluster.create_database(f"bench_{uuid.uuid4().hex[:12]}"))
            inserted_s = asyncio.run(seed_database(dsn, args.machines))
            print(f"  inserted {args.machines:,} machines in {inserted_s * 1000:.0f} ms (one INSERT … SELECT)")
            api_port = free_port()
            start_services(infra, dsn, api_port)
            key = asyncio.run(region_ready_and_key(infra.nats_url))
            wait_for_port(api_port, READY_DEADLINE_S)
            url = f"http://{HOST}:{api_port}"
            wait_for_api(url, key)
            results = run_probes(url, key, args)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(f"(took {time.monotonic() - started:.0f} s)")
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
