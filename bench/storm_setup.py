"""What the boot-storm benches (bench/fleet.py, bench/drills.py) set up alike: a private place for the stack (free
ports for everything but DHCP, no metrics ports, a state root under /tmp that PostgreSQL's user can reach) and
SIGTERM taken like Ctrl-C, so the storm site is torn down either way."""

import os
import signal
import socket
import tempfile
from pathlib import Path

STACK_PORTS = (
    "NATS_PORT", "NATS_MONITOR_PORT", "POSTGRES_PORT", "API_PORT", "TFTP_PORT", "RACK_HTTP_PORT",
    "APT_PROXY_PORT", "DNS_PORT", "SYSLOG_PORT",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def interrupted(signum: int, _: object) -> None:
    raise KeyboardInterrupt


def private_stack_root(prefix: str) -> Path:
    """Free ports for the stack (METALBUS_STACK_* in this process's environment) and a fresh state root."""
    signal.signal(signal.SIGTERM, interrupted)
    os.environ.update({f"METALBUS_STACK_{name}": str(free_port()) for name in STACK_PORTS})
    os.environ["METALBUS_STACK_METRICS_PORT_BASE"] = "0"
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    return root
