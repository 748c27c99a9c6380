"""Benchmark: request/reply round trips per second through ``metalbus.bus.Bus`` versus raw nats-py.

Its one job: measure the helper's overhead against raw nats-py on the same private, loopback-only
nats-server in the same run, and print whether it stays under the 20 % goal.

    .venv/bin/python bench/bus.py --quick     # ~15-20 s
    .venv/bin/python bench/bus.py             # ~1.5 min

Both sides do the work a real service must do: the raw side parses and produces JSON with ``json``,
the helper side validates and dumps pydantic ``Message`` models. Rounds are interleaved (raw and helper
alternate, and which goes first alternates per round) and the median of the rounds is reported. The last
line printed is ``helper overhead: <X.X>% (goal < 20%) meets`` (or ``short``), taken from the worse of the
measured patterns.
"""

import argparse
import asyncio
import contextlib
import ctypes
import gc
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from metalbus.bus import Bus, ConnectOptions
from metalbus.contracts.base import Message
from metalbus.stack.binaries import nats_server_binary
from metalbus.subjects import RequestSubject

GOAL_PERCENT = 20.0
HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 5.0
SERVER_READY_DEADLINE_S = 10.0
SERVER_STOP_GRACE_S = 5.0
CLOSE_DEADLINE_S = 5.0
PR_SET_PDEATHSIG = 1
RAW_SUBJECT = "bench.echo.raw"


# -- bench-only contract (deliberately not part of metalbus.subjects' catalogue) ----------------------------
class EchoRequest(Message):
    """A small request: a couple of strings and ints, like a typical control-plane query."""

    host: str
    rack: str
    seq: int
    attempt: int


class EchoReply(Message):
    """The request's fields echoed back."""

    host: str
    rack: str
    seq: int
    attempt: int


BENCH_ECHO: RequestSubject[EchoRequest, EchoReply] = RequestSubject(
    "bench.echo.helper",
    EchoRequest,
    EchoReply,
    "Benchmark only: echo the request's fields.",
    queue=None,
)


# -- the private nats-server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if this benchmark dies without cleaning up (Linux only)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until_accepting(server: "subprocess.Popen[bytes]", port: int, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_DEADLINE_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"nats-server exited with {server.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nats-server did not accept connections on {HOST}:{port} in time")


def stop_server(server: "subprocess.Popen[bytes]") -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=SERVER_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@contextlib.contextmanager
def nats_server() -> Iterator[tuple[str, str]]:
    """A nats-server on a free loopback port in a temporary directory; yields (url, version) and always
    stops it, whatever ends the benchmark."""
    binary = nats_server_binary()
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="metalbus-bench-") as workdir:
        log_path = Path(workdir) / "nats-server.log"
        for attempt in range(3):  # a free port may be taken between probing and binding it
            port = free_port()
            with log_path.open("ab") as log_file:
                server = subprocess.Popen(
                    [str(binary), "-a", HOST, "-p", str(port)],
                    cwd=workdir,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us; we stop the server after the clients
                    preexec_fn=_die_with_parent,  # no threads exist yet, so this is safe
                )
            try:
                wait_until_accepting(server, port, log_path)
            except BaseException:
                stop_server(server)
                if attempt == 2:
                    raise
                continue
            try:
                yield f"nats://{HOST}:{port}", version
            finally:
                stop_server(server)
            return


def _sigterm_as_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


# -- the two sides -----------------------------------------------------------------------------------------
RoundTrip = Callable[[int], Awaitable[None]]


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


async def raw_echo(client: NatsClient, msg: Msg) -> None:
    """The raw server: parse the JSON request, echo its fields as a JSON reply."""
    request = json.loads(msg.data)
    reply = {
        "schema_version": 1,
        "host": request["host"],
        "rack": request["rack"],
        "seq": request["seq"],
        "attempt": request["attempt"],
    }
    await client.publish(msg.reply, dumps(reply))


async def helper_echo(request: EchoRequest) -> EchoReply:
    return EchoReply(host=request.host, rack=request.rack, seq=request.seq, attempt=request.attempt)


def raw_round_trip(client: NatsClient) -> RoundTrip:
    async def round_trip(seq: int) -> None:
        payload = dumps({"schema_version": 1, "host": "node-0042", "rack": "rack-07", "seq": seq, "attempt": 1})
        msg = await client.request(RAW_SUBJECT, payload, timeout=REQUEST_TIMEOUT_S)
        if json.loads(msg.data)["seq"] != seq:
            raise RuntimeError("raw echo returned the wrong sequence number")

    return round_trip


def helper_round_trip(bus: Bus) -> RoundTrip:
    async def round_trip(seq: int) -> None:
        request = EchoRequest(host="node-0042", rack="rack-07", seq=seq, attempt=1)
        reply = await bus.request(BENCH_ECHO, request, timeout=REQUEST_TIMEOUT_S)
        if reply.seq != seq:
            raise RuntimeError("helper echo returned the wrong sequence number")

    return round_trip


# -- measuring ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pattern:
    name: str
    in_flight: int


async def measure(round_trip: RoundTrip, in_flight: int, seconds: float, max_count: int) -> float:
    """Round trips per second with ``in_flight`` workers; stops at ``seconds`` or ``max_count`` trips."""
    issued = 0
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued, done
        while issued < max_count and time.perf_counter() < deadline:
            issued += 1
            await round_trip(issued)
            done += 1

    gc.collect()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - started)


@dataclass
class Samples:
    raw: list[float]
    helper: list[float]

    @property
    def raw_rate(self) -> float:
        return statistics.median(self.raw)

    @property
    def helper_rate(self) -> float:
        return statistics.median(self.helper)

    @property
    def overhead(self) -> float:
        return overhead_percent(self.raw_rate, self.helper_rate)

    def round_overheads(self) -> list[float]:
        return [overhead_percent(r, h) for r, h in zip(self.raw, self.helper, strict=True)]


def overhead_percent(raw_rate: float, helper_rate: float) -> float:
    return (raw_rate / helper_rate - 1) * 100


async def connect_raw(url: str, name: str) -> NatsClient:
    client: NatsClient = await nats.connect(servers=[url], name=name, connect_timeout=2, allow_reconnect=False)
    return client


async def run(url: str, patterns: list[Pattern], rounds: int, seconds: float, max_count: int) -> dict[str, Samples]:
    async with contextlib.AsyncExitStack() as stack:

        async def closing_raw(client: NatsClient) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), CLOSE_DEADLINE_S)

        async def closing_bus(bus: Bus) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.drain(), CLOSE_DEADLINE_S)

        raw_server = await connect_raw(url, "bench-raw-server")
        stack.push_async_callback(closing_raw, raw_server)
        raw_client = await connect_raw(url, "bench-raw-client")
        stack.push_async_callback(closing_raw, raw_client)
        options = ConnectOptions(servers=(url,), initial_connect_deadline_s=5.0)
        helper_server = await Bus.connect(options)
        stack.push_async_callback(closing_bus, helper_server)
        helper_client = await Bus.connect(options)
        stack.push_async_callback(closing_bus, helper_client)

        async def on_raw(msg: Msg) -> None:
            await raw_echo(raw_server, msg)

        await raw_server.subscribe(RAW_SUBJECT, cb=on_raw)
        await helper_server.serve(BENCH_ECHO, helper_echo)
        await raw_server.flush()
        await helper_server.client.flush()

        sides = {"raw": raw_round_trip(raw_client), "helper": helper_round_trip(helper_client)}
        for pattern in patterns:  # warm up both paths (imports, pydantic caches, inbox subscription)
            for round_trip in sides.values():
                await measure(round_trip, pattern.in_flight, min(0.3, seconds), max_count)

        results = {pattern.name: Samples([], []) for pattern in patterns}
        for index in range(rounds):
            order = ("raw", "helper") if index % 2 == 0 else ("helper", "raw")
            for pattern in patterns:
                for side in order:
                    rate = await measure(sides[side], pattern.in_flight, seconds, max_count)
                    getattr(results[pattern.name], side).append(rate)
            line = "  ".join(
                f"{p.name}: raw {results[p.name].raw[-1]:,.0f}/s helper {results[p.name].helper[-1]:,.0f}/s"
                for p in patterns
            )
            print(f"  round {index + 1}/{rounds}  {line}", flush=True)
        if helper_server.dropped_requests:
            raise RuntimeError(f"helper server dropped {helper_server.dropped_requests} requests")
        return results


def report(results: dict[str, Samples], patterns: list[Pattern]) -> None:
    worst = max(patterns, key=lambda p: results[p.name].overhead)
    print()
    print(f"median of rounds, round trips/s; verdict = worse of the patterns ({worst.name})")
    print(f"{'pattern':<22}{'raw nats-py':>14}{'metalbus Bus':>14}{'overhead':>11}   per-round overhead")
    for pattern in patterns:
        samples = results[pattern.name]
        spread = ", ".join(f"{value:.1f}" for value in samples.round_overheads())
        print(
            f"{pattern.name:<22}{samples.raw_rate:>14,.0f}{samples.helper_rate:>14,.0f}"
            f"{samples.overhead:>10.1f}%   [{spread}]"
        )
    overhead = results[worst.name].overhead
    verdict = "meets" if overhead < GOAL_PERCENT else "short"
    print(f"helper overhead: {overhead:.1f}% (goal < {GOAL_PERCENT:.0f}%) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~15-20 s)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 4)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 2.5, quick 0.8)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight, concurrent pattern")
    parser.add_argument("--max-count", type=int, default=1_000_000, help="cap on round trips per measurement")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    rounds: int = args.rounds or (4 if args.quick else 7)
    seconds: float = args.seconds or (0.8 if args.quick else 2.5)
    if rounds < 1 or seconds <= 0 or args.concurrency < 1 or args.max_count < 1:
        raise SystemExit("rounds, seconds, concurrency and max-count must be positive")
    patterns = [Pattern("sequential (1)", 1), Pattern(f"concurrent ({args.concurrency})", args.concurrency)]
    signal.signal(signal.SIGTERM, _sigterm_as_exit)
    try:
        with nats_server() as (url, version):
            print(
                f"bench/bus.py: {version} on {url}, Python {sys.version.split()[0]}, "
                f"{rounds} rounds x {seconds:g} s per side and pattern",
                flush=True,
            )
            results = asyncio.run(run(url, patterns, rounds, seconds, args.max_count))
    except KeyboardInterrupt:
        print("interrupted; nats-server stopped", file=sys.stderr)
        return 130
    report(results, patterns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
