"""Simulated BMCs for tests and the power benchmark: OpenIPMI's ``ipmi_sim`` on 127.0.0.1, one UDP port each.

Each BMC gets the lab's configuration (``metalbus.lab.bmc.write_simulated_bmc``: lan.conf, one MC without SDRs,
a chassis control script ipmi_sim calls for power and boot device) with a harmless ``sleep 600`` as "the machine":
power on starts it (its pid and start ticks in ``machine.pid``), power off stops it, and power state is that
process being alive; the boot device set over IPMI is written to ``boot``. (ipmi_sim's own ``startcmd`` does
power the same way but refuses boot device requests without a chassis control program, and with one it routes
power there too.) Everything is stopped by pid at the end.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalbus.lab.bmc import USERNAME, BmcFiles, write_simulated_bmc

HOST = "127.0.0.1"
READY_DEADLINE_S = 10.0
# RMCP presence ping (ASF class, IANA 4542, message type 0x80): ipmi_sim answers with a pong once listening.
RMCP_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x01, 0x00, 0x00])


@dataclass
class SimulatedBmc:
    name: str
    port: int
    directory: Path
    password: str = field(repr=False)
    process: "subprocess.Popen[bytes] | None" = None

    @property
    def parameters(self) -> dict[str, Any]:
        return {"address": HOST, "port": self.port, "username": USERNAME}

    @property
    def secrets(self) -> dict[str, str]:
        return {"password": self.password}

    def machine_pid(self) -> int | None:
        try:
            pid = int((self.directory / "machine.pid").read_text().split()[0])  # "<pid> <start ticks>"
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if _alive(pid) else None

    def boot_device(self) -> str | None:
        path = self.directory / "boot"
        return path.read_text().strip() if path.exists() else None

    def ipmitool(self, *args: str, password: str | None = None, timeout_s: float = 10.0) -> str:
        """Run ``ipmitool -I lanplus -C 3`` against this BMC; its stdout (stderr appended on failure)."""
        secret = self.password if password is None else password
        command = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", HOST, "-p", str(self.port), "-U", USERNAME]
        done = subprocess.run(
            [*command, "-P", secret, *args], capture_output=True, text=True, timeout=timeout_s, check=False
        )
        return done.stdout + ("" if done.returncode == 0 else done.stderr)

    def start(self) -> None:
        write_simulated_bmc(
            BmcFiles(self.directory),
            name=self.name,
            address=HOST,
            port=self.port,
            password=self.password,
            machine_dir=self.directory,
            machine_command=["sleep", "600"],
        )
        self.process = subprocess.Popen(
            ["ipmi_sim", "-n", "-c", "lan.conf", "-f", "emu.cmd", "-s", "state"],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=(self.directory / "ipmi_sim.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, deadline: float) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.settimeout(0.1)
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    log = (self.directory / "ipmi_sim.log").read_text(errors="replace")
                    raise RuntimeError(f"ipmi_sim {self.name} exited: {log[-500:]}")
                probe.sendto(RMCP_PING, (HOST, self.port))
                with contextlib.suppress(TimeoutError):
                    if probe.recv(512):
                        return
        raise RuntimeError(f"ipmi_sim {self.name} did not answer on port {self.port}")

    def stop(self) -> None:
        machine = self.machine_pid()
        if machine is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(machine, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed machine waits a moment for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_udp_ports(count: int) -> list[int]:
    """Distinct UDP ports free right now on 127.0.0.1 (held together while chosen so none repeats)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextlib.contextmanager
def simulated_bmcs(root: Path, count: int, password: str) -> Iterator[list[SimulatedBmc]]:
    """``count`` running BMCs under ``root``, answering; all stopped (and their machines killed) on exit."""
    bmcs = [
        SimulatedBmc(name=f"bmc{index}", port=port, directory=root / f"bmc{index}", password=password)
        for index, port in enumerate(free_udp_ports(count))
    ]
    try:
        for bmc in bmcs:
            bmc.start()
        deadline = time.monotonic() + READY_DEADLINE_S + count * 0.1
        for bmc in bmcs:
            bmc.wait_ready(deadline)
        yield bmcs
    finally:
        for bmc in bmcs:
            bmc.stop()
