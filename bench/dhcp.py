"""Benchmark: DORA exchanges per second of rack-dhcp against Kea (memfile, PostgreSQL), ISC dhcpd and dnsmasq.

Its one job: run perfdhcp against each server in turn on the same link, find the highest rate each sustains
without drops, and print rack-dhcp's ratio to each.

    bash scripts/setup-bench.sh                 # once: kea-dhcp4-server kea-admin (perfdhcp) isc-dhcp-server dnsmasq
    .venv/bin/python bench/dhcp.py --quick      # ~1 min
    .venv/bin/python bench/dhcp.py              # ~4 min
    .venv/bin/python bench/dhcp.py --cpu 2000   # and first, per server, where the CPU goes at 2,000/s offered

Needs root (network namespaces, port 67). The bench makes two namespaces joined by a veth: the server's (10.99.0.1)
and the client's (10.99.0.2, where perfdhcp runs). The bench process itself moves into the server namespace, so
everything it starts there - nats-server and PostgreSQL on that namespace's loopback, one region process, and each
DHCP server in turn - sees only the server's end of the link. Every server gets the same /20 pool of 4,085
addresses and perfdhcp uses fewer distinct clients (``--clients``), so nobody runs out. perfdhcp sends as a relay
agent would (giaddr set, unicast to the server), so every server answers the relay address.

Each server is measured on a ladder of offered rates (doubling, or halving while the first rate is not clean; then
bisecting, twice in the full run and once in the quick, between the best clean rate and the lowest unclean one): a
step is clean when at most 0.1 % of exchanges are dropped and at least 90 % of the offered rate completes. A
server's figure is the best clean step's completed DORA/s. rack-dhcp persists every lease through the region
(NATS request/reply into PostgreSQL): OFFER and ACK are each a region transaction. "rack-dhcp in memory"
(``rack_dhcp_in_memory.py``) is the reference for the rack's own share: the same server code with its leases in a
dict, no region, NATS or PostgreSQL. Kea-PostgreSQL's schema is made with
``kea-admin db-init pgsql``. A server whose package is missing is skipped with the reason. Every process is stopped
by its pid file and both namespaces are deleted, whatever ends the run. The last line printed is
``rack-dhcp vs ISC dhcpd: <X.XX>x (goal >= 1.0x) meets`` (or ``short``).

``--cpu RATE[,RATE…]`` first runs perfdhcp at each rate for ``--cpu-seconds`` against each server and prints the
CPU seconds per 1,000 completed DORA of every process involved (``process_cpu``): the server, the region,
nats-server, PostgreSQL's backends and its other processes, perfdhcp, the whole host, and the rest (other work on
the host, or the kernel's time for the link): whether the rack, the region or PostgreSQL is the wall.
"""

import argparse
import asyncio
import ctypes
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from dhcp_servers import (
    INSTALL_HINT,
    POOL_FIRST,
    POOL_LAST,
    POOL_SIZE,
    Launch,
    Link,
    Measurement,
    PostgresAccess,
    ThirdParty,
    dnsmasq,
    isc_dhcpd,
    kea_admin_db_init,
    kea_memfile,
    kea_postgres,
    perfdhcp,
    served_subnet,
)
from metalbus.bus import Bus, ConnectOptions
from metalbus.stack.postgres import ROLE
from metalbus.stack.processes import read_pid_file, running_identity, start_detached
from metalbus.subjects import SUBNET_CREATE
from process_cpu import Group, measure_cpu
from region_leases import Infrastructure, _sigterm_as_exit, infrastructure, wait_until_ready

RACK_DHCP = "rack-dhcp"
RACK_DHCP_IN_MEMORY = "rack-dhcp in memory"
ISC_DHCPD = "ISC dhcpd"
KEA_MEMFILE = "Kea memfile"
KEA_POSTGRES = "Kea PostgreSQL"
DNSMASQ = "dnsmasq"
GOALS = {ISC_DHCPD: 1.0, KEA_POSTGRES: 1.0, KEA_MEMFILE: 0.5}
CLEAN_DROP_RATIO = 0.001
CLEAN_COMPLETION = 0.9
WARM_UP_TRIES = 20
MIN_RATE = 10
CLONE_NEWNET = 0x40000000


def enter_namespace(namespace: str) -> None:
    """Move this process into ``namespace`` (setns(2)); every process it starts afterwards lives there too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace} failed")
    finally:
        os.close(fd)


# -- one server under test ----------------------------------------------------------------------------------
@dataclass
class Result:
    server: str
    best: Measurement | None = None
    first_unclean: Measurement | None = None
    skipped: str | None = None


def is_clean(step: Measurement) -> bool:
    return step.drop_ratio <= CLEAN_DROP_RATIO and step.exchanges_per_s >= CLEAN_COMPLETION * step.offered


def ladder(link: Link, name: str, args: argparse.Namespace) -> Result:
    """Doubling offered rates until a step is not clean (halving while the first is not); then ``args.refine``
    bisections between the best clean rate and the lowest unclean one."""
    result = Result(name)

    def step(rate: int) -> bool:
        measured = perfdhcp(link, rate, args.clients, args.seconds)
        clean = is_clean(measured)
        print(
            f"  {name}: offered {rate:>6,}/s -> {measured.exchanges_per_s:>8,.0f} DORA/s, "
            f"{measured.drops} drops of {measured.sent}{'' if clean else '  (not clean)'}",
            flush=True,
        )
        if clean and (result.best is None or measured.exchanges_per_s > result.best.exchanges_per_s):
            result.best = measured
        if not clean and (result.first_unclean is None or rate < result.first_unclean.offered):
            result.first_unclean = measured
        return clean

    rate = args.start_rate
    if step(rate):
        while rate * 2 <= args.max_rate and step(rate * 2):
            rate *= 2
    else:
        while rate // 2 >= MIN_RATE and not step(rate // 2):
            rate //= 2
    for _ in range(args.refine):
        if result.best is None or result.first_unclean is None:
            break
        middle = (result.best.offered + result.first_unclean.offered) // 2
        if middle in (result.best.offered, result.first_unclean.offered):
            break
        step(middle)
    return result


def warm_up(link: Link, pid_file: Path, name: str) -> str | None:
    """Until the server completes exchanges (it may still be opening its socket); why not, or None."""
    for _ in range(WARM_UP_TRIES):
        if running_identity(pid_file) is None:
            return "exited during start-up"
        if perfdhcp(link, 50, 10, 1).exchanges_per_s > 0:
            return None
    return f"answered nothing after {WARM_UP_TRIES} warm-up runs"


def measure_process(infra: Infrastructure, link: Link, name: str, launch: Launch, args: argparse.Namespace) -> Result:
    """Start one server as its own process, warm it up, climb the ladder, stop it by its pid file."""
    slug = name.lower().replace(" ", "-")
    pid_file, log_file = infra.root / f"{slug}.pid-identity", infra.root / f"{slug}.log"
    start_detached(launch.argv, log_path=log_file, pid_path=pid_file, env=dict(os.environ) | launch.env)
    infra.owned.started(pid_file)
    try:
        problem = warm_up(link, pid_file, name)
        if problem is not None:
            tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
            return Result(name, skipped=f"{problem}; log: {' | '.join(tail)}")
        for rate in args.cpu:
            cpu_breakdown(link, cpu_groups(infra, name, pid_file), rate, args)
        return Result(name) if args.cpu_only else ladder(link, name, args)
    finally:
        infra.owned.stop(pid_file)


def measure_third_party(infra: Infrastructure, link: Link, server: ThirdParty, args: argparse.Namespace) -> Result:
    missing = server.missing()
    if missing is not None:
        print(f"  {server.name}: skipped, {missing}", flush=True)
        return Result(server.name, skipped=missing)
    work = infra.root / server.name.lower().replace(" ", "-")
    work.mkdir()
    binary = shutil.which(server.binary)
    assert binary is not None
    return measure_process(infra, link, server.name, server.launch(binary, work, link.server_interface), args)


def kea_postgres_server(infra: Infrastructure) -> ThirdParty:
    """Kea with its lease schema made by ``kea-admin db-init pgsql`` in a fresh database of the bench's cluster."""
    database = f"kea_{uuid.uuid4().hex[:12]}"
    asyncio.run(infra.cluster.create_database(database))
    access = PostgresAccess(
        infra.cluster.host, infra.cluster.port, ROLE, infra.cluster.password_file.read_text().strip(), database
    )
    server = ThirdParty(KEA_POSTGRES, "kea-dhcp4", kea_postgres(access), needs_postgres=True)
    if server.missing() is None:
        kea_admin_db_init(access)
    return server


# -- where the CPU goes ---------------------------------------------------------------------------------------
def cpu_groups(infra: Infrastructure, name: str, pid_file: Path) -> list[Group]:
    """The server under test, and every process of the shared infrastructure that is running: the region (it
    serves rack-dhcp only, idle otherwise), nats-server, PostgreSQL's backends and its other processes."""
    groups = []
    for group_name, path in (
        (name, pid_file),
        ("region", infra.root / "region.pid-identity"),
        ("nats-server", infra.root / "nats.pid"),
    ):
        identity = running_identity(path)
        if identity is not None:
            groups.append(Group(group_name, identity.pid))
    postmaster = read_pid_file(infra.cluster.pid_file)
    if postmaster is not None:
        groups.append(Group("postgres backends", postmaster.pid, children=True, which=is_postgres_backend))
        groups.append(
            Group("postgres others", postmaster.pid, children=True, which=lambda c: not is_postgres_backend(c))
        )
    return groups


def is_postgres_backend(command_line: str) -> bool:
    """A client connection's process titles itself ``postgres: <user> <database> <host>(<port>) <state>``."""
    return command_line.startswith("postgres: ") and ("(" in command_line or "[local]" in command_line)


def cpu_breakdown(link: Link, groups: list[Group], rate: int, args: argparse.Namespace) -> None:
    """One ``--cpu-seconds`` perfdhcp run at ``rate``: CPU seconds of each group per 1,000 completed DORA."""
    measured, use = measure_cpu(groups, lambda: perfdhcp(link, rate, args.clients, args.cpu_seconds), args.cpu_seconds)
    thousands = measured.exchanges_per_s * measured.seconds / 1000
    print(
        f"  CPU at offered {rate:,}/s for {args.cpu_seconds} s: {measured.exchanges_per_s:,.0f} DORA/s, "
        f"{measured.drops} drops of {measured.sent}",
        flush=True,
    )
    print(f"    {'process':<20}{'CPU-s':>8}{'% core':>8}{'CPU-s/1k DORA':>15}")
    for name, seconds in use.seconds.items():
        per_thousand = f"{seconds / thousands:.3f}" if thousands else "-"
        label = "perfdhcp" if name == "workload" else name
        print(f"    {label:<20}{seconds:>8.2f}{100 * seconds / use.wall_s:>8.0f}{per_thousand:>15}", flush=True)


# -- rack-dhcp with the region ------------------------------------------------------------------------------
def start_region(infra: Infrastructure, dsn: str) -> None:
    env = dict(os.environ) | {
        "METALBUS_REGION_NATS_URL": infra.nats_url,
        "METALBUS_REGION_DATABASE_DSN": dsn,
        "METALBUS_REGION_REPLICA_ID": "bench-dhcp-r1",
        "METALBUS_REGION_LOG_LEVEL": "warning",
    }
    pid_file = infra.root / "region.pid-identity"
    start_detached(
        [sys.executable, "-m", "metalbus_region"], log_path=infra.root / "region.log", pid_path=pid_file, env=env
    )
    infra.owned.started(pid_file)


async def prepare_region(infra: Infrastructure) -> None:
    """The region ready, with the bench's subnet (same pool as every other server)."""
    bus = await Bus.connect(ConnectOptions(servers=(infra.nats_url,), name="bench-dhcp"))
    try:
        await wait_until_ready(bus, 1)
        await bus.request(SUBNET_CREATE, served_subnet(), timeout=10)
    finally:
        with suppress(Exception):
            await asyncio.wait_for(bus.drain(), 5)


def measure_rack_dhcp(infra: Infrastructure, link: Link, args: argparse.Namespace) -> Result:
    dsn = asyncio.run(infra.cluster.create_database(f"bench_{uuid.uuid4().hex[:12]}"))
    start_region(infra, dsn)
    asyncio.run(prepare_region(infra))
    env = {
        "METALBUS_RACK_DHCP_NATS_URL": infra.nats_url,
        "METALBUS_RACK_DHCP_RACK_ID": "rack-bench",
        "METALBUS_RACK_DHCP_SERVE_INTERFACES": f'["{link.server_interface}"]',
        "METALBUS_RACK_DHCP_PORT": "67",
        "METALBUS_RACK_DHCP_LOG_LEVEL": "warning",
    }
    return measure_process(infra, link, RACK_DHCP, Launch([sys.executable, "-m", "metalbus_rack_dhcp"], env), args)


def measure_rack_dhcp_in_memory(infra: Infrastructure, link: Link, args: argparse.Namespace) -> Result:
    """The reference for rack-dhcp's own share: its DHCP path with leases in a dict (``rack_dhcp_in_memory``)."""
    argv = [
        sys.executable,
        str(Path(__file__).with_name("rack_dhcp_in_memory.py")),
        "--interface",
        link.server_interface,
    ]
    return measure_process(infra, link, RACK_DHCP_IN_MEMORY, Launch(argv, {}), args)


# -- the run ------------------------------------------------------------------------------------------------
def run_all(infra: Infrastructure, link: Link, args: argparse.Namespace) -> list[Result]:
    """rack-dhcp first, then the others; a server left out with ``--servers`` is reported as skipped."""
    results = [measure_rack_dhcp(infra, link, args)]
    if RACK_DHCP_IN_MEMORY in args.servers:
        results.append(measure_rack_dhcp_in_memory(infra, link, args))
    else:
        results.append(Result(RACK_DHCP_IN_MEMORY, skipped="not in --servers"))
    third_parties: dict[str, Callable[[], ThirdParty]] = {
        KEA_MEMFILE: lambda: ThirdParty(KEA_MEMFILE, "kea-dhcp4", kea_memfile),
        KEA_POSTGRES: lambda: kea_postgres_server(infra),
        ISC_DHCPD: lambda: ThirdParty(ISC_DHCPD, "dhcpd", isc_dhcpd),
        DNSMASQ: lambda: ThirdParty(DNSMASQ, "dnsmasq", dnsmasq),
    }
    for name, server in third_parties.items():
        if name in args.servers:
            results.append(measure_third_party(infra, link, server(), args))
        else:
            results.append(Result(name, skipped="not in --servers"))
    return results


def ratio(ours: Result, theirs: Result) -> float | None:
    if ours.best is None or theirs.best is None or theirs is ours:
        return None
    return ours.best.exchanges_per_s / theirs.best.exchanges_per_s


def report(results: list[Result]) -> None:
    ours = results[0]
    print()
    print(f"{'server':<16}{'DORA/s':>10}{'offered/s':>11}{'drops':>8}{'rack-dhcp / it':>16}{'goal':>8}")
    for result in results:
        if result.skipped is not None:
            print(f"{result.server:<16}{'skipped: ' + result.skipped}")
            continue
        goal = f">= {GOALS[result.server]:.1f}x" if result.server in GOALS else ""
        if result.best is None:
            print(f"{result.server:<16}{'no clean rate':>10}{'':>11}{'':>8}{'':>16}{goal:>8}")
            continue
        share = ratio(ours, result)
        print(
            f"{result.server:<16}{result.best.exchanges_per_s:>10,.0f}{result.best.offered:>11,}"
            f"{result.best.drops:>8}{'' if share is None else f'{share:.2f}x':>16}{goal:>8}"
        )
    dhcpd = next(result for result in results if result.server == ISC_DHCPD)
    versus = ratio(ours, dhcpd)
    verdict = "meets" if versus is not None and versus >= GOALS[ISC_DHCPD] else "short"
    print(f"rack-dhcp vs ISC dhcpd: {versus or 0.0:.2f}x (goal >= {GOALS[ISC_DHCPD]:.1f}x) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 s steps, one bisection (~1 min)")
    parser.add_argument("--seconds", type=int, help="seconds per ladder step (default 4, quick 1)")
    parser.add_argument("--start-rate", type=int, help="first offered DORA/s (default 250, quick 500)")
    parser.add_argument("--max-rate", type=int, default=32000, help="highest offered DORA/s of the ladder")
    parser.add_argument("--refine", type=int, help="bisection steps after the ladder (default 2, quick 1)")
    parser.add_argument(
        "--cpu",
        type=lambda text: [int(rate) for rate in text.split(",") if rate],
        default=[],
        help="comma-separated offered rates: before its ladder, each server gets one --cpu-seconds run per rate "
        "with a CPU breakdown per process (server, region, nats-server, PostgreSQL, perfdhcp, rest of the host)",
    )
    parser.add_argument("--cpu-seconds", type=int, default=5, help="seconds of each --cpu run")
    parser.add_argument("--cpu-only", action="store_true", help="only the --cpu runs, no ladder")
    parser.add_argument("--clients", type=int, default=3000, help=f"distinct client MACs (pool: {POOL_SIZE})")
    parser.add_argument(
        "--servers",
        type=lambda text: [name.strip() for name in text.split(",")],
        default=[RACK_DHCP_IN_MEMORY, KEA_MEMFILE, KEA_POSTGRES, ISC_DHCPD, DNSMASQ],
        help="comma-separated servers to compare rack-dhcp with (default: all five; "
        f"'{RACK_DHCP_IN_MEMORY}' is rack-dhcp's own DHCP path with leases in a dict, no region)",
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (1 if args.quick else 4)
    args.start_rate = args.start_rate or (500 if args.quick else 250)
    args.refine = args.refine if args.refine is not None else (1 if args.quick else 2)
    if args.seconds < 1 or args.start_rate < 1 or args.max_rate < args.start_rate or args.refine < 0:
        raise SystemExit("seconds and rates must be positive, max-rate >= start-rate, refine not negative")
    if not 1 <= args.clients < POOL_SIZE:
        raise SystemExit(f"clients must be between 1 and {POOL_SIZE - 1}: every server must have room for all")
    return args


def preconditions() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, port 67)"
    for tool, hint in (("ip", "apt-get install iproute2"), ("perfdhcp", INSTALL_HINT)):
        if shutil.which(tool) is None:
            return f"{tool} is not installed ({hint})"
    return None


@contextmanager
def bench_link() -> Iterator[Link]:
    link = Link.unique()
    try:
        link.create()
        yield link
    finally:
        link.delete()


def main() -> int:
    args = parse_args()
    problem = preconditions()
    if problem is not None:
        print(f"bench/dhcp.py: cannot run: {problem}")
        print(f"rack-dhcp vs ISC dhcpd: 0.00x (goal >= {GOALS[ISC_DHCPD]:.1f}x) short")
        return 1
    signal.signal(signal.SIGTERM, _sigterm_as_exit)
    started = time.monotonic()
    try:
        with bench_link() as link:
            enter_namespace(link.server_namespace)
            with infrastructure() as infra:
                print(
                    f"bench/dhcp.py: {os.cpu_count()} CPUs, pool {POOL_FIRST}-{POOL_LAST} ({POOL_SIZE}), "
                    f"{args.clients} perfdhcp clients, {args.seconds} s steps from {args.start_rate}/s",
                    flush=True,
                )
                results = run_all(infra, link, args)
    except KeyboardInterrupt:
        print("interrupted; every process started was stopped", file=sys.stderr)
        return 130
    print(f"(took {time.monotonic() - started:.0f} s)")
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
