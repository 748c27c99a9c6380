"""Benchmark: rack-tftp against tftpd-hpa, one big file and many concurrent small ones, served from one directory.

Its one job: start each server in turn as its own process on 127.0.0.1, fetch the same files from it the same way,
and print both figures and rack-tftp's ratio to tftpd-hpa.

    .venv/bin/python bench/tftp.py --quick      # 16 MiB file, 1 try; 4 rounds of 50 (~5 s)
    .venv/bin/python bench/tftp.py              # 64 MiB file, best of 3; 10 rounds of 50 (~15 s)

- Single transfer: ``atftp`` fetches the big file (``blksize 1468``, ``tsize 0``, ``windowsize 16``) into a file;
  the best of the tries gives MB/s (MiB = 2^20 bytes). tftpd-hpa 5.2 ignores windowsize (it answers without it and
  sends one block per ACK); rack-tftp acknowledges it and sends 16 blocks per ACK. The first download of each
  server is compared with the original. The same fetch without windowsize (both servers lockstep) is printed
  too, for information: it is not part of the goal.
- Concurrent small transfers: rounds of 50 simultaneous downloads of a pxelinux.0-sized file (the machine's
  ``/usr/lib/PXELINUX/pxelinux.0`` if present, else 42,430 random bytes), ``blksize 1468`` without windowsize as
  pxelinux asks, by an asyncio client in this process (the same client for both servers; a process per download
  would measure process start-up); transfers per second over all rounds, every download checked byte for byte.

tftpd-hpa runs as ``in.tftpd --foreground --address 127.0.0.1:<port> --secure --user tftp <dir>`` (it forks a
child per transfer); rack-tftp runs as ``python -c`` calling ``serve_tftp`` with a ``StaticBootRoot`` over the
same directory, logging at warning. Both are stopped by their pid. The last line printed is
``tftp vs tftpd-hpa (worse of single-transfer and concurrent): <X.XX>x (goal >= 1.0x) meets`` (or ``short``).
"""

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from metalbus_rack_tftp.tftp_codec import Opcode, encode_ack, encode_request

GOAL = 1.0
BLKSIZE = 1468
WINDOWSIZE = 16
PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
PXELINUX_SIZE = 42_430
CONCURRENT = 50
IN_TFTPD = "/usr/sbin/in.tftpd"
READY_TRIES = 50
CLIENT_TRIES = 10
CLIENT_WAIT_S = 1.0
RACK_TFTP_PROGRAM = """
import asyncio, sys
from pathlib import Path
from metalbus.logging import configure_logging
from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.tftp_server import serve_tftp

async def main() -> None:
    server = await serve_tftp("127.0.0.1", int(sys.argv[1]), StaticBootRoot(Path(sys.argv[2])))
    try:
        await asyncio.Event().wait()
    finally:
        server.close()

configure_logging("warning")
asyncio.run(main())
"""


@dataclass
class Figures:
    server: str
    single_mb_s: float = 0.0
    lockstep_mb_s: float = 0.0
    transfers_per_s: float = 0.0
    problem: str | None = None


# -- an asyncio TFTP client for the concurrent rounds ---------------------------------------------------------
class Download(asyncio.DatagramProtocol):
    """One RRQ with blksize, lockstep ACKs; resends its last packet after a silence."""

    def __init__(self, port: int, name: str) -> None:
        self.server = ("127.0.0.1", port)
        self.name = name
        self.blksize = 512
        self.received = bytearray()
        self.expected = 1
        self.last_sent = encode_request(Opcode.RRQ, name, "octet", {"blksize": str(BLKSIZE), "tsize": "0"})
        self.peer: tuple[str, int] | None = None
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.progress = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send(self.last_sent, self.server)

    def send(self, packet: bytes, to: tuple[str, int]) -> None:
        self.last_sent = packet
        assert self.transport is not None
        self.transport.sendto(packet, to)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.done.done() or (self.peer is not None and addr != self.peer):
            return
        self.peer, self.progress = addr, self.progress + 1
        opcode = int.from_bytes(data[:2], "big")
        if opcode == Opcode.OACK:
            self.blksize = BLKSIZE
            self.send(encode_ack(0), addr)
        elif opcode == Opcode.DATA and int.from_bytes(data[2:4], "big") == self.expected % 0x10000:
            self.received += data[4:]
            self.send(encode_ack(self.expected), addr)
            self.expected += 1
            if len(data) - 4 < self.blksize:
                self.done.set_result(bytes(self.received))
        elif opcode == Opcode.ERROR:
            self.done.set_exception(RuntimeError(f"TFTP error {data[2:4].hex()}: {data[4:-1]!r}"))

    async def result(self) -> bytes:
        for _ in range(CLIENT_TRIES):
            before = self.progress
            try:
                return await asyncio.wait_for(asyncio.shield(self.done), CLIENT_WAIT_S)
            except TimeoutError:
                if self.progress == before:
                    self.send(self.last_sent, self.peer or self.server)
        raise TimeoutError(f"{self.name}: no progress after {CLIENT_TRIES} tries")


async def download(port: int, name: str) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: Download(port, name), local_addr=("127.0.0.1", 0))
    try:
        return await protocol.result()
    finally:
        transport.close()


async def concurrent_rounds(port: int, name: str, expected: bytes, rounds: int) -> float:
    """Transfers per second over ``rounds`` rounds of CONCURRENT simultaneous downloads, each checked."""
    started = time.perf_counter()
    for _ in range(rounds):
        contents = await asyncio.gather(*(download(port, name) for _ in range(CONCURRENT)))
        if any(content != expected for content in contents):
            raise RuntimeError("a concurrent download differs from the file")
    return rounds * CONCURRENT / (time.perf_counter() - started)


async def wait_until_serving(port: int, name: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(READY_TRIES):
        if process.poll() is not None:
            raise RuntimeError(f"exited during start-up with status {process.returncode}")
        try:
            await asyncio.wait_for(download(port, name), 1.0)
            return
        except (TimeoutError, RuntimeError, OSError):
            await asyncio.sleep(0.1)
    raise RuntimeError(f"answered nothing after {READY_TRIES} tries")


# -- the single big transfer ----------------------------------------------------------------------------------
def atftp_fetch(port: int, name: str, local: Path, windowsize: int | None = WINDOWSIZE) -> float:
    """Seconds atftp takes to fetch ``name`` with blksize 1468 (and ``windowsize`` unless None)."""
    options = ["--option", f"blksize {BLKSIZE}", "--option", "tsize 0"]
    if windowsize is not None:
        options += ["--option", f"windowsize {windowsize}"]
    command = ["atftp", "-g", "-r", name, "-l", str(local), *options, "127.0.0.1", str(port)]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"atftp failed: {completed.stdout.strip()} {completed.stderr.strip()}")
    return elapsed


def single_transfer(port: int, root: Path, name: str, tries: int, work: Path, windowsize: int | None) -> float:
    """Best MB/s of ``tries`` fetches; the first download is compared with the original."""
    size = (root / name).stat().st_size
    local = work / f"fetched-{port}"
    best = atftp_fetch(port, name, local, windowsize)
    if local.read_bytes() != (root / name).read_bytes():
        raise RuntimeError("the downloaded big file differs from the original")
    local.unlink()
    for _ in range(tries - 1):
        best = min(best, atftp_fetch(port, name, Path("/dev/null"), windowsize))
    return size / (1024 * 1024) / best


# -- servers ----------------------------------------------------------------------------------------------------
def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(server: str, argv: list[str], port: int, root: Path, args: argparse.Namespace, work: Path) -> Figures:
    figures = Figures(server)
    small = (root / "pxelinux.0").read_bytes()
    with running(argv, work / f"{server}.log") as process:
        try:
            asyncio.run(wait_until_serving(port, "pxelinux.0", process))
            figures.single_mb_s = single_transfer(port, root, "big.bin", args.tries, work, WINDOWSIZE)
            print(f"  {server}: single transfer {figures.single_mb_s:,.1f} MB/s", flush=True)
            figures.lockstep_mb_s = single_transfer(port, root, "big.bin", args.tries, work, None)
            print(f"  {server}: single transfer without windowsize {figures.lockstep_mb_s:,.1f} MB/s", flush=True)
            figures.transfers_per_s = asyncio.run(concurrent_rounds(port, "pxelinux.0", small, args.rounds))
            print(f"  {server}: {CONCURRENT} concurrent small {figures.transfers_per_s:,.0f} transfers/s", flush=True)
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as error:
            tail = (work / f"{server}.log").read_text(errors="replace").strip().splitlines()[-3:]
            figures.problem = f"{error}; log: {' | '.join(tail)}"
            print(f"  {server}: failed: {figures.problem}", flush=True)
    return figures


def populate(root: Path, big_mib: int) -> None:
    root.chmod(0o755)  # tftpd-hpa reads as user tftp
    small = PXELINUX.read_bytes() if PXELINUX.is_file() else os.urandom(PXELINUX_SIZE)
    (root / "pxelinux.0").write_bytes(small)
    with (root / "big.bin").open("wb") as big:
        for _ in range(big_mib):
            big.write(os.urandom(1024 * 1024))
    for path in root.iterdir():
        path.chmod(0o644)


# -- the run ----------------------------------------------------------------------------------------------------
def ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs > 0 else 0.0


def report(hpa: Figures, rack: Figures) -> None:
    single, concurrent = ratio(rack.single_mb_s, hpa.single_mb_s), ratio(rack.transfers_per_s, hpa.transfers_per_s)
    print()
    lockstep = ratio(rack.lockstep_mb_s, hpa.lockstep_mb_s)
    print(f"{'server':<12}{'single MB/s':>14}{'(no windowsize)':>17}{f'{CONCURRENT}-concurrent transfers/s':>30}")
    for figures in (hpa, rack):
        if figures.problem is not None:
            print(f"{figures.server:<12}failed: {figures.problem}")
        else:
            print(
                f"{figures.server:<12}{figures.single_mb_s:>14,.1f}{figures.lockstep_mb_s:>17,.1f}"
                f"{figures.transfers_per_s:>30,.0f}"
            )
    print(f"{'ratio':<12}{f'{single:.2f}x':>14}{f'{lockstep:.2f}x':>17}{f'{concurrent:.2f}x':>30}")
    print(f"tftp single-transfer ratio: {single:.2f}x tftpd-hpa (goal >= {GOAL:.1f}x)")
    print(f"tftp {CONCURRENT}-concurrent ratio: {concurrent:.2f}x tftpd-hpa (goal >= {GOAL:.1f}x)")
    worst = min(single, concurrent)
    verdict = "meets" if worst >= GOAL else "short"
    print(f"tftp vs tftpd-hpa (worse of single-transfer and concurrent): {worst:.2f}x (goal >= {GOAL:.1f}x) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="16 MiB file, one try, 4 rounds (~5 s)")
    parser.add_argument("--big-mib", type=int, help="size of the single-transfer file (default 64, quick 16)")
    parser.add_argument("--tries", type=int, help="single-transfer fetches, best kept (default 3, quick 1)")
    parser.add_argument("--rounds", type=int, help=f"rounds of {CONCURRENT} concurrent (default 10, quick 4)")
    args = parser.parse_args()
    args.big_mib = args.big_mib or (16 if args.quick else 64)
    args.tries = args.tries or (1 if args.quick else 3)
    args.rounds = args.rounds or (4 if args.quick else 10)
    if min(args.big_mib, args.tries, args.rounds) < 1:
        raise SystemExit("big-mib, tries and rounds must be positive")
    return args


def preconditions() -> str | None:
    if os.geteuid() != 0:
        return "needs root (tftpd-hpa --secure chroots)"
    if not Path(IN_TFTPD).is_file():
        return f"{IN_TFTPD} is not installed (apt-get install tftpd-hpa)"
    if shutil.which("atftp") is None:
        return "atftp is not installed (apt-get install atftp)"
    return None


def main() -> int:
    args = parse_args()
    problem = preconditions()
    if problem is not None:
        print(f"bench/tftp.py: cannot run: {problem}")
        print(f"tftp vs tftpd-hpa (worse of single-transfer and concurrent): 0.00x (goal >= {GOAL:.1f}x) short")
        return 1
    with tempfile.TemporaryDirectory(prefix="bench-tftp-") as temporary:
        work = Path(temporary)
        root = work / "root"
        root.mkdir()
        populate(root, args.big_mib)
        print(
            f"bench/tftp.py: {os.cpu_count()} CPUs, {args.big_mib} MiB single transfer (best of {args.tries}), "
            f"{args.rounds} rounds of {CONCURRENT} x {(root / 'pxelinux.0').stat().st_size:,} bytes",
            flush=True,
        )
        hpa_port, rack_port = free_udp_port(), free_udp_port()
        hpa_argv = [IN_TFTPD, "--foreground", "--address", f"127.0.0.1:{hpa_port}", "--secure", "--user", "tftp"]
        hpa = measure("tftpd-hpa", [*hpa_argv, str(root)], hpa_port, root, args, work)
        rack_argv = [sys.executable, "-c", RACK_TFTP_PROGRAM, str(rack_port), str(root)]
        rack = measure("rack-tftp", rack_argv, rack_port, root, args, work)
    report(hpa, rack)
    return 0


if __name__ == "__main__":
    sys.exit(main())
