"""Benchmark: metadata GETs per second through the rack's proxy (HTTP → metadata app → NATS → region → PostgreSQL).

Its one job: measure how many cloud-init meta-data reads one rack answers per second, with p50/p99 latency, and
say whether that meets the goal.

    .venv/bin/python bench/metadata.py --quick     # ~20 s
    .venv/bin/python bench/metadata.py             # ~45 s

Everything is real and on loopback: a private nats-server and PostgreSQL (``bench/region_leases.py``'s
infrastructure), one region process (``python -m metalbus_region``), and one rack process (this file with
``--serve-rack``: rack-tftp's HTTP server with rack-proxy's metadata app mounted at /MAAS, as the rack runs it).
``--machines`` machines are inserted COMMISSIONING, each with its own OAuth token, in two ``INSERT … SELECT``.

The client (this process) keeps ``--concurrency`` requests in flight (httpx, keep-alive, one connection per
worker) for ``--seconds`` after a warm-up; each request is a GET of ``<ver>/meta-data/{instance-id,
local-hostname,public-keys,vendor-data}`` for a random machine, with that machine's OAuth PLAINTEXT header, so
every request checks a token in PostgreSQL. Any answer but 200 counts as an error.

Goal: 500 GETs/s. A boot storm of 1,000 machines, each reading its ~10 items (the datasource's five, the
commissioning scripts, the runner's first signal…) within 20 s is 500 requests/s on one rack; MAAS racks are
sized for a few hundred machines each, so one rack at 500/s leaves headroom.

Every process started is stopped by its pid, whatever ends the run. The last line printed is
``metadata GETs/s: <N> (goal >= 500) meets`` (or ``short``).
"""

import argparse
import asyncio
import os
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType

import asyncpg
import httpx

from metalbus.bus import Bus, ConnectOptions
from metalbus.db.migrate import migrate_dsn
from metalbus.logging import configure_logging
from metalbus.stack.processes import start_detached

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from region_leases import HOST, Infrastructure, free_port, infrastructure, wait_for_port, wait_until_ready

GOAL_GETS_PER_S = 500.0
ITEMS = ("instance-id", "local-hostname", "public-keys", "vendor-data")
READY_DEADLINE_S = 60.0
REQUEST_TIMEOUT_S = 30.0

INSERT_MACHINES = """
INSERT INTO machines (system_id, hostname, status, architecture, boot_mac, boot_purpose, commissioning_deadline)
SELECT 'm' || lpad(to_hex(i), 5, '0'), 'bench-' || lpad(i::text, 6, '0'), 'commissioning', 'amd64/bios',
       ('020000' || lpad(to_hex(i), 6, '0'))::macaddr, 'commissioning', now() + interval '1 day'
  FROM generate_series(0, $1 - 1) AS i
"""
INSERT_TOKENS = """
INSERT INTO metadata_tokens (token_key, consumer_key, token_secret, system_id)
SELECT 'token-' || i, 'consumer-' || i, 'secret-' || i, 'm' || lpad(to_hex(i), 5, '0')
  FROM generate_series(0, $1 - 1) AS i
"""


def authorization(number: int) -> str:
    return (
        'OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", '
        f'oauth_consumer_key="consumer-{number}", oauth_token="token-{number}", '
        f'oauth_signature="%26secret-{number}", oauth_nonce="{number}", oauth_timestamp="1700000000"'
    )


def _sigterm_as_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# -- the rack process -----------------------------------------------------------------------------------------
async def serve_rack(nats_url: str, port: int) -> None:
    """rack-tftp's HTTP server with the metadata app, until SIGTERM (run in its own process)."""
    from metalbus_rack_proxy.metadata_app import BusMetadataRegion, MetadataApp
    from metalbus_rack_tftp.http_boot import serve_http_boot
    from metalbus_rack_tftp.sources import FileRefused, OpenedFile, RefusalReason, Requester

    class NoFiles:
        async def open(self, path: str, requester: Requester) -> OpenedFile:
            raise FileRefused(RefusalReason.NOT_FOUND, path)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    bus = await Bus.connect(ConnectOptions(servers=(nats_url,), name="bench-rack-proxy"))
    server = await serve_http_boot(HOST, port, NoFiles(), metadata_app=MetadataApp(BusMetadataRegion(bus)))
    try:
        await stop.wait()
    finally:
        await server.close()
        await bus.drain()


# -- set-up ---------------------------------------------------------------------------------------------------
async def seed_database(dsn: str, machines: int) -> None:
    await migrate_dsn(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(INSERT_MACHINES, machines)
        await conn.execute(INSERT_TOKENS, machines)
        await conn.execute("ANALYZE machines; ANALYZE metadata_tokens")
    finally:
        await conn.close()


def start_services(infra: Infrastructure, dsn: str, rack_port: int) -> None:
    region_env = {
        "METALBUS_REGION_NATS_URL": infra.nats_url,
        "METALBUS_REGION_DATABASE_DSN": dsn,
        "METALBUS_REGION_REPLICA_ID": "bench-metadata-region",
        "METALBUS_REGION_LOG_LEVEL": "warning",
    }
    services = (
        ("region", [sys.executable, "-m", "metalbus_region"], region_env),
        ("rack", [sys.executable, os.path.abspath(__file__), "--serve-rack", infra.nats_url, str(rack_port)], {}),
    )
    for name, argv, env in services:
        pid_file = infra.root / f"{name}.pid"
        start_detached(argv, log_path=infra.root / f"{name}.log", pid_path=pid_file, env=dict(os.environ) | env)
        infra.owned.started(pid_file)


async def region_ready(nats_url: str) -> None:
    bus = await Bus.connect(ConnectOptions(servers=(nats_url,), name="bench-metadata"))
    try:
        await wait_until_ready(bus, 1)
    finally:
        await bus.close()


# -- the load -------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def load(base_url: str, machines: int, concurrency: int, seconds: float) -> Measured:
    """``concurrency`` workers, each with its own keep-alive connection, GETting meta-data for ``seconds``."""
    measured = Measured()
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        chooser = random.Random(seed)
        async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S) as client:
            while time.perf_counter() < deadline:
                number = chooser.randrange(machines)
                path = f"2012-03-01/meta-data/{chooser.choice(ITEMS)}"
                started = time.perf_counter()
                try:
                    reply = await client.get(path, headers={"Authorization": authorization(number)})
                except httpx.HTTPError:
                    measured.errors += 1
                    continue
                if reply.status_code == 200:
                    measured.latencies_s.append(time.perf_counter() - started)
                else:
                    measured.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    measured.seconds = time.perf_counter() - started
    return measured


async def wait_for_rack(base_url: str) -> None:
    deadline = time.perf_counter() + READY_DEADLINE_S
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while time.perf_counter() < deadline:
            try:
                reply = await client.get(
                    "2012-03-01/meta-data/instance-id", headers={"Authorization": authorization(0)}
                )
                if reply.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the rack at {base_url} did not answer within {READY_DEADLINE_S:g}s")


async def measure(base_url: str, args: argparse.Namespace) -> Measured:
    await wait_for_rack(base_url)
    await load(base_url, args.machines, args.concurrency, args.warmup)
    return await load(base_url, args.machines, args.concurrency, args.seconds)


# -- the run --------------------------------------------------------------------------------------------------
def report(measured: Measured, args: argparse.Namespace) -> None:
    print(
        f"  {len(measured.latencies_s):,} GETs in {measured.seconds:.1f} s with {args.concurrency} in flight, "
        f"{measured.errors} errors; p50 {measured.percentile_ms(0.5):.1f} ms, p99 {measured.percentile_ms(0.99):.1f} ms"
    )
    verdict = "meets" if measured.rate >= GOAL_GETS_PER_S and measured.errors == 0 else "short"
    print(f"metadata GETs/s: {measured.rate:.0f} (goal >= {GOAL_GETS_PER_S:.0f}) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="8 s measured after a 2 s warm-up (~20 s in all)")
    parser.add_argument("--seconds", type=float, help="measured seconds (default 30, quick 8)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds (default 5, quick 2)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--machines", type=int, default=1000, help="machines with tokens (default 1000)")
    args = parser.parse_args()
    args.seconds = args.seconds or (8.0 if args.quick else 30.0)
    args.warmup = args.warmup or (2.0 if args.quick else 5.0)
    return args


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-rack":
        configure_logging("warning")
        asyncio.run(serve_rack(sys.argv[2], int(sys.argv[3])))
        return 0
    args = parse_args()
    configure_logging("warning")
    signal.signal(signal.SIGTERM, _sigterm_as_exit)
    started = time.monotonic()
    try:
        with infrastructure() as infra:
            print(f"bench/metadata.py: Python {sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
            dsn = asyncio.run(infra.cluster.create_database(f"bench_{uuid.uuid4().hex[:12]}"))
            asyncio.run(seed_database(dsn, args.machines))
            rack_port = free_port()
            start_services(infra, dsn, rack_port)
            asyncio.run(region_ready(infra.nats_url))
            wait_for_port(rack_port, READY_DEADLINE_S)
            measured = asyncio.run(measure(f"http://{HOST}:{rack_port}/MAAS/metadata/", args))
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(f"(took {time.monotonic() - started:.0f} s)")
    report(measured, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
