"""Benchmark: rack-proxy's DNS against dnsmasq serving the same names, each as its own process on 127.0.0.1.

Its one job: build one zone (subnet names with several racks each, machine hostnames, their PTR records), serve it
from rack-proxy (``python -m metalbus_rack_proxy.dns_service --zone-file``, no NATS, logging at warning) and from
dnsmasq (``--no-resolv --no-hosts --addn-hosts=<the same names> --local=/maas-internal/``), load each for a fixed
time with the same query mix, and print queries per second and rack-proxy's ratio to dnsmasq.

    .venv/bin/python bench/dns.py --quick       # 5 s per server (~15 s)
    .venv/bin/python bench/dns.py               # 20 s per server (~45 s)

The load generator is ``dnsperf`` (Debian package ``dnsperf``: ``-l <seconds> -c 4 -q 100``) when installed.
Without it a fallback client in this repository runs: one process keeping ``WINDOW`` queries in flight over one UDP
socket. The fallback is itself CPU-bound in Python, so it caps both servers and the ratio it prints is closer to
1.0 than dnsperf's would be: the header line says which generator ran. Every reply is counted only if its rcode is
NOERROR. The last line printed is ``dns qps vs dnsmasq: <X.XX>x (goal >= 0.5x) meets`` (or ``short``).
"""

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from metalbus_rack_proxy.dns_codec import HEADER, RecordType, encode_name, parse_header

GOAL = 0.5
DOMAIN = "maas-internal"
SUBNETS = 16
RACKS_PER_SUBNET = 3
HOSTS = 256
WINDOW = 64
READY_TRIES = 100


@dataclass(frozen=True)
class Figures:
    server: str
    qps: float
    problem: str | None = None


def zone_names() -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """Subnet names with their racks, and (hostname, address) pairs."""
    subnets = {
        f"10-{20 + index}-0-0-24.{DOMAIN}": [f"10.{20 + index}.0.{2 + rack}" for rack in range(RACKS_PER_SUBNET)]
        for index in range(SUBNETS)
    }
    hosts = [(f"node-{number}", f"10.{20 + number % SUBNETS}.0.{100 + number // SUBNETS}") for number in range(HOSTS)]
    return subnets, hosts


def write_zone_file(path: Path) -> None:
    subnets, hosts = zone_names()
    zone = {
        "domain": DOMAIN,
        "serial": 1,
        "subnets": [
            {"name": name, "cidr": f"{racks[0].rsplit('.', 1)[0]}.0/24", "rack_addresses": racks}
            for name, racks in subnets.items()
        ],
        "hosts": [{"hostname": hostname, "address": address} for hostname, address in hosts],
    }
    path.write_text(json.dumps(zone))


def write_hosts_file(path: Path) -> None:
    subnets, hosts = zone_names()
    lines = [f"{address} {name}" for name, racks in subnets.items() for address in racks]
    lines += [f"{address} {hostname}.{DOMAIN}" for hostname, address in hosts]
    path.write_text("\n".join(lines) + "\n")


def query_mix() -> list[tuple[str, str]]:
    """Each subnet name, each hostname and each host's PTR, once: 1/3 are hostnames, 1/3 PTR."""
    subnets, hosts = zone_names()
    mix = [(name, "A") for name in subnets]
    mix += [(f"{hostname}.{DOMAIN}", "A") for hostname, _ in hosts]
    mix += [(IPv4Address(address).reverse_pointer, "PTR") for _, address in hosts]
    return mix


def query_wire(name: str, rdtype: str, query_id: int = 0x4242) -> bytes:
    """A recursion-desired query (the bench file is named dns.py, which hides dnspython's ``dns`` package)."""
    question = encode_name(name) + struct.pack("!HH", RecordType[rdtype], 1)
    return HEADER.pack(query_id, 0x0100, 1, 0, 0, 0) + question


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(0.1)
        client.sendto(query_wire(f"node-1.{DOMAIN}", "A"), ("127.0.0.1", port))
        try:
            reply = client.recv(512)
        except OSError:  # TimeoutError included: not listening yet
            return False
    return parse_header(reply).ancount > 0


@contextmanager
def serving(argv: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(READY_TRIES):
            if answers(port):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{argv[0]} did not answer on port {port}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_dnsperf(port: int, queries: Path, seconds: int) -> float:
    output = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds), "-c", "4",
         "-q", "100"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Queries per second:\s+([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"dnsperf printed no rate: {output[-300:]}")
    return float(match.group(1))


def run_fallback_client(port: int, seconds: int) -> float:
    """NOERROR replies per second with ``WINDOW`` queries in flight; a lost reply is replaced after 0.2 s."""
    wires = [query_wire(name, rdtype, number % 65536) for number, (name, rdtype) in enumerate(query_mix())]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.connect(("127.0.0.1", port))
        client.settimeout(0.2)
        sent = answered = 0
        for _ in range(WINDOW):
            client.send(wires[sent % len(wires)])
            sent += 1
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            try:
                reply = client.recv(1500)
                answered += (reply[3] & 0x0F) == 0
            except TimeoutError:
                pass  # a lost query: send a new one in its place
            client.send(wires[sent % len(wires)])
            sent += 1
        return answered / (time.perf_counter() - started)


def measure(server: str, argv: list[str], port: int, work: Path, seconds: int, use_dnsperf: bool) -> Figures:
    queries = work / "queries.txt"
    queries.write_text("".join(f"{name} {rdtype}\n" for name, rdtype in query_mix()))
    try:
        with serving(argv, port):
            qps = run_dnsperf(port, queries, seconds) if use_dnsperf else run_fallback_client(port, seconds)
    except (RuntimeError, subprocess.SubprocessError, OSError) as error:
        return Figures(server, 0.0, str(error))
    return Figures(server, qps)


def report(dnsmasq: Figures, rack: Figures) -> None:
    print(f"{'server':<14}{'queries/s':>12}")
    for figures in (dnsmasq, rack):
        print(
            f"{figures.server:<14}{figures.qps:>12,.0f}" + (f"  failed: {figures.problem}" if figures.problem else "")
        )
    ratio = rack.qps / dnsmasq.qps if dnsmasq.qps else 0.0
    verdict = "meets" if ratio >= GOAL else "short"
    print(f"dns qps vs dnsmasq: {ratio:.2f}x (goal >= {GOAL:.1f}x) {verdict}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s per server")
    parser.add_argument("--seconds", type=int, help="load time per server (default 20, quick 5)")
    args = parser.parse_args()
    args.seconds = args.seconds or (5 if args.quick else 20)
    if args.seconds < 1:
        raise SystemExit("seconds must be positive")
    return args


def main() -> int:
    args = parse_args()
    dnsmasq_binary = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)
    if dnsmasq_binary is None:
        print("bench/dns.py: cannot run: dnsmasq is not installed (apt-get install dnsmasq-base)")
        print(f"dns qps vs dnsmasq: 0.00x (goal >= {GOAL:.1f}x) short")
        return 1
    use_dnsperf = shutil.which("dnsperf") is not None
    generator = "dnsperf -c 4 -q 100" if use_dnsperf else f"fallback python client, {WINDOW} in flight (no dnsperf)"
    print(
        f"bench/dns.py: {os.cpu_count()} CPUs, {SUBNETS} subnet names x {RACKS_PER_SUBNET} racks, {HOSTS} hosts, "
        f"{len(query_mix())} query names (A and PTR), {args.seconds} s per server, load: {generator}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-dns-") as temporary:
        work = Path(temporary)
        write_zone_file(work / "zone.json")
        write_hosts_file(work / "hosts")
        dnsmasq_port, rack_port = free_port(), free_port()
        dnsmasq_argv = [
            dnsmasq_binary, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--addn-hosts={work / 'hosts'}",
            f"--local=/{DOMAIN}/", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={dnsmasq_port}",
            "--pid-file=", "--cache-size=10000", "--user=root",
        ]  # fmt: skip
        dnsmasq = measure("dnsmasq", dnsmasq_argv, dnsmasq_port, work, args.seconds, use_dnsperf)
        rack_argv = [
            sys.executable, "-m", "metalbus_rack_proxy.dns_service", "--zone-file", str(work / "zone.json"),
            "--address", "127.0.0.1", "--port", str(rack_port), "--log-level", "warning",
        ]  # fmt: skip
        rack = measure("rack-proxy", rack_argv, rack_port, work, args.seconds, use_dnsperf)
    report(dnsmasq, rack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
