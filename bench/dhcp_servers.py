"""The DHCP servers bench/dhcp.py compares rack-dhcp with, the link they serve and the perfdhcp client.

Its one job: for each third-party server (Kea memfile, Kea PostgreSQL, ISC dhcpd, dnsmasq), write its
configuration for the bench's link and give the command that runs it in the foreground; create and delete the
pair of network namespaces joined by a veth; run perfdhcp at one rate and read its report.

Every server serves the same pool (``POOL_FIRST`` .. ``POOL_LAST`` of ``NETWORK``) with the same lease time, and
none pings an address before offering it (dhcpd's ``ping-check`` and dnsmasq's ping are off: Kea and rack-dhcp
do not ping either).
"""

import contextlib
import json
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from metalbus.contracts.leases import SubnetCreate

NETWORK = IPv4Network("10.99.0.0/20")
SERVER_ADDRESS = IPv4Address("10.99.0.1")
CLIENT_ADDRESS = IPv4Address("10.99.0.2")
POOL_FIRST = IPv4Address("10.99.0.10")
POOL_LAST = IPv4Address("10.99.15.254")
POOL_SIZE = int(POOL_LAST) - int(POOL_FIRST) + 1
LEASE_TIME_S = 3600
INSTALL_HINT = "install it with: bash scripts/setup-bench.sh"


def served_subnet() -> SubnetCreate:
    """The subnet as metalbus serves it in the bench: the region's, and the in-memory reference's (same pool,
    lease time, gateway and DNS server as every other server's configuration)."""
    return SubnetCreate(
        cidr=NETWORK,
        gateway=SERVER_ADDRESS,
        dns_servers=[SERVER_ADDRESS],
        dynamic_start=POOL_FIRST,
        dynamic_end=POOL_LAST,
        lease_time_s=LEASE_TIME_S,
    )


def run(*argv: str, timeout: float = 30.0) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout).stdout


# -- the link ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """Two namespaces, the server's and the client's, joined by a veth; names unique to this run."""

    server_namespace: str
    client_namespace: str
    server_interface: str
    client_interface: str

    @classmethod
    def unique(cls) -> "Link":
        suffix = secrets.token_hex(3)
        return cls(f"mbds{suffix}", f"mbdc{suffix}", f"mbdsv{suffix}", f"mbdcl{suffix}")

    def create(self) -> None:
        """Both namespaces with loopback up, the veth's ends in them with their addresses. ``delete`` undoes it."""
        run("ip", "netns", "add", self.server_namespace)
        run("ip", "netns", "add", self.client_namespace)
        run("ip", "link", "add", self.server_interface, "type", "veth", "peer", "name", self.client_interface)
        for namespace, interface, address in (
            (self.server_namespace, self.server_interface, SERVER_ADDRESS),
            (self.client_namespace, self.client_interface, CLIENT_ADDRESS),
        ):
            run("ip", "link", "set", interface, "netns", namespace)
            run("ip", "-n", namespace, "addr", "add", f"{address}/{NETWORK.prefixlen}", "dev", interface)
            run("ip", "-n", namespace, "link", "set", "lo", "up")
            run("ip", "-n", namespace, "link", "set", interface, "up")

    def delete(self) -> None:
        """Deleting a namespace deletes the veth end inside it, and with it the pair; a missing one is fine."""
        for command in (
            ("ip", "link", "del", self.server_interface),
            ("ip", "netns", "del", self.client_namespace),
            ("ip", "netns", "del", self.server_namespace),
        ):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                run(*command)


# -- the third-party servers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """What runs one server in the foreground: its command, extra environment, and its lease file."""

    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class ThirdParty:
    name: str
    binary: str
    launch: Callable[[str, Path, str], Launch]  # (binary path, work directory, interface) -> Launch
    needs_postgres: bool = False

    def missing(self) -> str | None:
        """Why this server cannot run here, or None."""
        if shutil.which(self.binary) is None:
            return f"{self.binary} is not installed ({INSTALL_HINT})"
        if self.needs_postgres and shutil.which("kea-admin") is None:
            return f"kea-admin is not installed ({INSTALL_HINT})"
        return None


def kea_config(interface: str, work: Path, lease_database: dict[str, object]) -> dict[str, object]:
    return {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "udp"},
            "lease-database": lease_database,
            "valid-lifetime": LEASE_TIME_S,
            "subnet4": [
                {"id": 1, "subnet": str(NETWORK), "pools": [{"pool": f"{POOL_FIRST} - {POOL_LAST}"}]},
            ],
            "loggers": [
                {
                    "name": "kea-dhcp4",
                    "output_options": [{"output": str(work / "kea-dhcp4.log")}],
                    "severity": "WARN",
                }
            ],
        }
    }


def kea_launch(binary: str, work: Path, interface: str, lease_database: dict[str, object]) -> Launch:
    config = work / "kea-dhcp4.json"
    config.write_text(json.dumps(kea_config(interface, work, lease_database), indent=2))
    # Kea writes its pid and lock files under /run/kea unless told otherwise: keep them in the work directory.
    return Launch([binary, "-c", str(config)], {"KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)})


def kea_memfile(binary: str, work: Path, interface: str) -> Launch:
    leases = {"type": "memfile", "persist": True, "name": str(work / "kea-leases4.csv"), "lfc-interval": 0}
    return kea_launch(binary, work, interface, leases)


@dataclass(frozen=True)
class PostgresAccess:
    host: str
    port: int
    user: str
    password: str
    database: str


def kea_admin_db_init(access: PostgresAccess) -> None:
    """``kea-admin db-init pgsql``: Kea's lease schema in an empty database."""
    run(
        "kea-admin", "db-init", "pgsql",
        "-h", access.host, "-P", str(access.port),
        "-u", access.user, "-p", access.password, "-n", access.database,
        timeout=120,
    )  # fmt: skip


def kea_postgres(access: PostgresAccess) -> Callable[[str, Path, str], Launch]:
    def launch(binary: str, work: Path, interface: str) -> Launch:
        leases = {
            "type": "postgresql",
            "host": access.host,
            "port": access.port,
            "user": access.user,
            "password": access.password,
            "name": access.database,
        }
        return kea_launch(binary, work, interface, leases)

    return launch


def isc_dhcpd(binary: str, work: Path, interface: str) -> Launch:
    config, leases = work / "dhcpd.conf", work / "dhcpd.leases"
    config.write_text(
        "authoritative;\n"
        "ddns-update-style none;\n"
        f"default-lease-time {LEASE_TIME_S};\n"
        f"max-lease-time {LEASE_TIME_S};\n"
        "ping-check false;\n"
        f"subnet {NETWORK.network_address} netmask {NETWORK.netmask} {{\n"
        f"  range {POOL_FIRST} {POOL_LAST};\n"
        "}\n"
    )
    leases.touch()
    argv = [binary, "-4", "-f", "-q", "-cf", str(config), "-lf", str(leases), "-pf", str(work / "dhcpd.pid")]
    return Launch([*argv, interface], {})


def dnsmasq(binary: str, work: Path, interface: str) -> Launch:
    argv = [
        binary,
        "--no-daemon",
        "--conf-file=/dev/null",
        "--port=0",  # DHCP only, no DNS
        f"--interface={interface}",
        "--bind-interfaces",
        f"--dhcp-range={POOL_FIRST},{POOL_LAST},{NETWORK.netmask},{LEASE_TIME_S}",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
        f"--dhcp-lease-max={POOL_SIZE}",
        f"--pid-file={work / 'dnsmasq.pid'}",
        "--dhcp-authoritative",
        "--no-ping",
        "--user=root",
        "--log-facility=-",
    ]
    return Launch(argv, {})


# -- perfdhcp ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Measurement:
    """One perfdhcp run at ``offered`` DORA/s for ``seconds``."""

    offered: int
    seconds: float
    exchanges_per_s: float
    sent: int
    drops: int

    @property
    def drop_ratio(self) -> float:
        return self.drops / self.sent if self.sent else 1.0


SENT_LINE = re.compile(r"^sent packets: (\d+)", re.MULTILINE)
RECEIVED_LINE = re.compile(r"^received packets: (\d+)", re.MULTILINE)
DROPS_LINE = re.compile(r"^drops: (\d+)", re.MULTILINE)


def parse_perfdhcp(output: str, offered: int, seconds: float) -> Measurement:
    """Completed DORA/s: ACKs received over the period (perfdhcp's own rate line also counts the exit wait);
    sent DISCOVERs; drops of both DISCOVER-OFFER and REQUEST-ACK."""
    sent = SENT_LINE.findall(output)
    received = RECEIVED_LINE.findall(output)
    drops = DROPS_LINE.findall(output)
    if len(sent) < 2 or len(received) < 2 or len(drops) < 2:
        raise RuntimeError(f"unexpected perfdhcp output:\n{output[-2000:]}")
    acks = int(received[1])
    return Measurement(offered, seconds, acks / seconds, int(sent[0]), sum(int(d) for d in drops))


def perfdhcp(link: Link, rate: int, clients: int, seconds: float) -> Measurement:
    """DORA at ``rate``/s from ``clients`` distinct MACs for ``seconds``, as a relay would send them (perfdhcp sets
    giaddr to its own address and unicasts to the server, which answers the relay address)."""
    argv = [
        "ip", "netns", "exec", link.client_namespace,
        "perfdhcp", "-4", "-l", link.client_interface,
        "-r", str(rate), "-R", str(clients), "-p", f"{seconds:g}",
        "-d", "1",  # a reply later than 1 s is a drop
        # After the period only 0.1 s more to collect late replies: a longer wait would let a server slower than
        # the offered rate finish the backlog and count it (ACKs are divided by the period alone).
        "-W", "100000",
        str(SERVER_ADDRESS),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    return parse_perfdhcp(result.stdout + result.stderr, rate, seconds)
