"""python -m metalbus.healthcheck: what the compose stack's containers report as healthy, checked against real
processes holding real sockets (and a real rack service connected to a real nats-server)."""

import http.server
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metalbus import healthcheck
from tests.conftest import NatsServer

READY_S = 10.0
# A process that connects to the TCP port given as argv[1], binds a UDP and a listening TCP socket, prints
# their ports and waits: what a rack service holds (NATS connection, TFTP, HTTP).
HOLDER = textwrap.dedent(
    """
    import socket, sys, time
    nats = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen()
    print(udp.getsockname()[1], tcp.getsockname()[1], flush=True)
    time.sleep(60)
    """
)

PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41234 1 0 100 0 0 10 0
   1: 0100007F:A2C4 0100007F:107E 01 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0 20 4 30 10 -1
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Stands in for NATS: a TCP port the holder connects to."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server


@pytest.fixture
def holder(tmp_path: Path, listener: socket.socket) -> Iterator[tuple[str, subprocess.Popen[str], int, int]]:
    """``python -m <a module of its own>`` holding a connection to the listener, a UDP and a TCP port."""
    module = f"mb_health_holder_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(HOLDER)
    process = subprocess.Popen(
        [sys.executable, "-m", module, str(listener.getsockname()[1])], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        udp_port, tcp_port = (int(port) for port in process.stdout.readline().split())
        yield module, process, udp_port, tcp_port
    finally:
        process.kill()
        process.wait(timeout=5)


def test_proc_net_lines_give_ports_state_and_inode() -> None:
    sockets = healthcheck.parse_proc_net("tcp", PROC_NET_TCP)
    assert sockets == [
        healthcheck.ProcSocket("tcp", 8080, 0, "0A", 41234),
        healthcheck.ProcSocket("tcp", 41668, 4222, "01", 41240),
    ]


def test_a_process_holding_its_connection_and_ports_is_healthy(
    holder: tuple[str, subprocess.Popen[str], int, int], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    module, process, udp_port, tcp_port = holder
    nats_port = listener.getsockname()[1]
    status = healthcheck.main(
        [
            *("process", "--module", module, "--pid", str(process.pid), "--connected-to", str(nats_port)),
            *("--listening", f"udp/{udp_port}", "--listening", f"tcp/{tcp_port}"),
        ]
    )
    assert status == 0
    assert capsys.readouterr().out.startswith(f"healthy: {module} (pid {process.pid})")


def test_the_process_is_found_by_the_module_it_runs(
    holder: tuple[str, subprocess.Popen[str], int, int], listener: socket.socket
) -> None:
    module, process, _, _ = holder
    assert healthcheck.find_module_process(module) == process.pid
    assert healthcheck.check_process(module, [listener.getsockname()[1]], []).healthy


def test_a_missing_connection_or_port_is_unhealthy_and_named(
    holder: tuple[str, subprocess.Popen[str], int, int], listener: socket.socket, capsys: pytest.CaptureFixture[str]
) -> None:
    module, process, udp_port, tcp_port = holder
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        other = unused.getsockname()[1]
        status = healthcheck.main(
            [
                *("process", "--module", module, "--pid", str(process.pid), "--connected-to", str(other)),
                *("--listening", f"udp/{tcp_port}", "--listening", f"tcp/{udp_port}"),  # the wrong way round
            ]
        )
    assert status == 1
    out = capsys.readouterr().out
    assert f"no connection to port {other}" in out
    assert f"nothing listening on udp/{tcp_port}" in out and f"nothing listening on tcp/{udp_port}" in out


def test_no_process_running_the_module_is_unhealthy() -> None:
    verdict = healthcheck.check_process(f"mb_health_absent_{uuid.uuid4().hex[:8]}", [4222], [])
    assert not verdict.healthy and "no process runs" in verdict.detail


class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503 if self.path == "/degraded" else 200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_http_check_accepts_only_the_statuses_it_is_given(http_server: int) -> None:
    base = f"http://127.0.0.1:{http_server}"
    assert healthcheck.main(["http", f"{base}/healthz"]) == 0
    assert healthcheck.main(["http", f"{base}/degraded"]) == 1
    assert healthcheck.main(["http", f"{base}/degraded", "--status", "200", "--status", "503"]) == 0


def test_http_check_of_a_closed_port_is_unhealthy() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        assert healthcheck.main(["http", f"http://127.0.0.1:{port}/healthz", "--timeout", "1"]) == 1


@pytest.mark.slow
def test_a_real_rack_service_is_healthy_once_connected_to_nats(nats_server: NatsServer, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METALBUS_")}
    env |= {"METALBUS_RACK_POWER_NATS_URL": nats_server.url, "METALBUS_RACK_POWER_RACK_ID": "rack-health"}
    with (tmp_path / "rack-power.log").open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "metalbus_rack_power"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + READY_S
        verdict = healthcheck.check_process("metalbus_rack_power", [nats_server.port], [], pid=process.pid)
        while not verdict.healthy and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
            verdict = healthcheck.check_process("metalbus_rack_power", [nats_server.port], [], pid=process.pid)
        assert verdict.healthy, verdict.detail
        nats_server.kill()  # the connection goes: no longer healthy
        deadline = time.monotonic() + READY_S
        while verdict.healthy and time.monotonic() < deadline:
            time.sleep(0.1)
            verdict = healthcheck.check_process("metalbus_rack_power", [nats_server.port], [], pid=process.pid)
        assert not verdict.healthy and f"no connection to port {nats_server.port}" in verdict.detail
    finally:
        process.terminate()
        process.wait(timeout=15)
