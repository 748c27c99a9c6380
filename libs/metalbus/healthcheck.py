"""Container health checks of the compose stack: ``python -m metalbus.healthcheck http|process …``.

``http URL`` is healthy when the URL answers one of the accepted statuses (nats-server's ``/healthz``, the api's
``/api/v1/health``). ``process --module M`` is healthy when the process running ``python -m M`` (found in
/proc, or given by ``--pid``) holds an established TCP connection to each ``--connected-to`` port (NATS,
PostgreSQL) and a socket bound on each ``--listening proto/port`` (DHCP, TFTP, HTTP, DNS, …). Both read only
what the kernel already shows, so the check needs no credentials and NATS permissions do not get in its way.
Exit status 0 healthy, 1 not; one line says why.
"""

import argparse
import itertools
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

PROC = Path("/proc")
TCP_ESTABLISHED = "01"
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    detail: str


@dataclass(frozen=True)
class ProcSocket:
    """One line of /proc/<pid>/net/{tcp,udp}[6]: the local and remote ports, the TCP state, the inode."""

    protocol: str
    local_port: int
    remote_port: int
    state: str
    inode: int


def parse_proc_net(protocol: str, text: str) -> list[ProcSocket]:
    """Parse the kernel's socket table (the header line, then ``sl local rem st … uid timeout inode …``)."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        sockets.append(
            ProcSocket(
                protocol=protocol,
                local_port=int(fields[1].rsplit(":", 1)[1], 16),
                remote_port=int(fields[2].rsplit(":", 1)[1], 16),
                state=fields[3],
                inode=int(fields[9]),
            )
        )
    return sockets


def process_sockets(pid: int, proc: Path = PROC) -> list[ProcSocket]:
    """The sockets one process holds (IPv4 and IPv6), as its own network namespace lists them."""
    inodes = socket_inodes(pid, proc)
    found = []
    for protocol in ("tcp", "udp"):
        for table in (protocol, protocol + "6"):
            try:
                text = (proc / str(pid) / "net" / table).read_text()
            except OSError:
                continue
            found += [s for s in parse_proc_net(protocol, text) if s.inode in inodes]
    return found


def socket_inodes(pid: int, proc: Path = PROC) -> set[int]:
    inodes = set()
    for fd in (proc / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed between listing and reading
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def runs_module(argv: Sequence[str], module: str) -> bool:
    """``python -m <module> …``, or the module's console script (``metalbus-rack-dhcp`` for metalbus_rack_dhcp)."""
    if any(arg == "-m" and following == module for arg, following in itertools.pairwise(argv)):
        return True
    console_script = module.replace("_", "-")
    return any(Path(arg).name == console_script for arg in argv[:2])


def find_module_process(module: str, proc: Path = PROC) -> int | None:
    """The lowest pid running ``module`` (in a container: its main process), never this check itself."""
    for entry in sorted((p for p in proc.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(entry.name) != os.getpid() and runs_module([a.decode(errors="replace") for a in argv], module):
            return int(entry.name)
    return None


def judge_sockets(
    sockets: Iterable[ProcSocket], connected_to: Sequence[int], listening: Sequence[tuple[str, int]]
) -> list[str]:
    """What is missing: a port with no established connection to it, a proto/port with nothing bound on it."""
    held = list(sockets)
    missing = [
        f"no connection to port {port}"
        for port in connected_to
        if not any(s.protocol == "tcp" and s.state == TCP_ESTABLISHED and s.remote_port == port for s in held)
    ]
    for protocol, port in listening:
        bound = (
            s.local_port == port and (protocol == "udp" or s.state == TCP_LISTEN)
            for s in held
            if s.protocol == protocol
        )
        if not any(bound):
            missing.append(f"nothing listening on {protocol}/{port}")
    return missing


def check_process(
    module: str, connected_to: Sequence[int], listening: Sequence[tuple[str, int]], pid: int | None = None
) -> Verdict:
    target = pid if pid is not None else find_module_process(module)
    if target is None:
        return Verdict(False, f"no process runs {module}")
    try:
        sockets = process_sockets(target)
    except OSError as error:
        return Verdict(False, f"cannot read the sockets of pid {target}: {error}")
    missing = judge_sockets(sockets, connected_to, listening)
    if missing:
        return Verdict(False, f"{module} (pid {target}): " + "; ".join(missing))
    held = [f"connected to {port}" for port in connected_to] + [f"{proto}/{port}" for proto, port in listening]
    return Verdict(True, f"{module} (pid {target}): " + (", ".join(held) or "running"))


def check_http(url: str, accepted: Sequence[int], timeout_s: float) -> Verdict:
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as error:
        return Verdict(False, f"{url}: {type(error).__name__}: {error}")
    return Verdict(response.status_code in accepted, f"{url}: {response.status_code}")


def protocol_port(value: str) -> tuple[str, int]:
    protocol, _, port = value.partition("/")
    if protocol not in ("tcp", "udp") or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected tcp/<port> or udp/<port>, got {value!r}")
    return protocol, int(port)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m metalbus.healthcheck", description=__doc__)
    checks = top.add_subparsers(dest="check", required=True)
    http = checks.add_parser("http", help="healthy when the URL answers an accepted status")
    http.add_argument("url")
    http.add_argument("--status", type=int, action="append", help="accepted status (repeatable; default 200)")
    http.add_argument("--timeout", type=float, default=3.0)
    process = checks.add_parser("process", help="healthy when the module's process holds its connections and ports")
    process.add_argument("--module", required=True, help="the python -m module, e.g. metalbus_region")
    process.add_argument("--pid", type=int, help="check this process instead of looking for the module")
    process.add_argument("--connected-to", type=int, action="append", default=[], metavar="PORT")
    process.add_argument("--listening", type=protocol_port, action="append", default=[], metavar="PROTO/PORT")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    options = parser().parse_args(argv)
    if options.check == "http":
        verdict = check_http(options.url, options.status or [200], options.timeout)
    else:
        verdict = check_process(options.module, options.connected_to, options.listening, options.pid)
    print(("healthy: " if verdict.healthy else "unhealthy: ") + verdict.detail)
    return 0 if verdict.healthy else 1


if __name__ == "__main__":
    sys.exit(main())
