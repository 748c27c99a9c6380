"""The steps of one VM's commissioning, seen from outside: when each first showed, in seconds after the commission call.

Its one job: watch the four places a step shows - the bus events (power, lease, result, machine status, with the
``at`` the region stamped them), the BMC's ``machine.pid`` (qemu running), rack-tftp's metrics (HTTP boot requests
and bytes, as deltas from the commission call) and the VM's serial log - and keep the first time each step is seen.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from metalbus.stack.processes import running_identity

POLL_S = 0.2

POWER_ON = "power on (IPMI event)"
QEMU_STARTED = "qemu running (machine.pid)"
FIRMWARE_ACK = "firmware DHCP ACK (lease bound)"
BOOT_CONFIG = "iPXE config fetched (HTTP)"
IMAGES_SENT = "kernel+initrd sent (HTTP)"
KERNEL = "kernel booting ('Linux version')"
INIT = "/init started"
EPHEMERAL_LEASE = "ephemeral DHCP lease"
METADATA_READ = "metadata read (user-data)"
RESULTS = "results stored (result event)"
READY = "READY (machine event)"
POWER_OFF = "powered off (serial)"

SERIAL_STEPS = {
    KERNEL: "Linux version",
    INIT: "metalbus-ephemeral: started",
    EPHEMERAL_LEASE: "metalbus-ephemeral: leased ",
    METADATA_READ: "user-data read from",
    POWER_OFF: "reboot: Power down",
}
STEPS = (
    POWER_ON, QEMU_STARTED, FIRMWARE_ACK, BOOT_CONFIG, IMAGES_SENT, KERNEL, INIT, EPHEMERAL_LEASE, METADATA_READ,
    RESULTS, READY, POWER_OFF,
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """The VM being watched and what its machine is called."""

    name: str
    firmware: str
    system_id: str
    mac: str
    serial_log: Path
    machine_pid_file: Path
    image_bytes: int
    """vmlinuz + initrd.img: what HTTP boot has sent once this VM has its kernel and initrd."""


@dataclass
class Timeline:
    """Seconds after the commission call (wall clock, so the region's event stamps compare) of each step."""

    started: float = field(default_factory=time.time)
    marks: dict[str, float] = field(default_factory=dict)
    final_status: str | None = None

    def mark(self, step: str, at: float | None = None) -> None:
        self.marks.setdefault(step, (time.time() if at is None else at) - self.started)

    def settled(self) -> bool:
        return self.final_status is not None


def scrape(port: int) -> dict[str, float]:
    """Every sample of the metrics endpoint by name; empty while it does not answer."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def http_boot_totals(port: int) -> tuple[float, float]:
    """(requests, bytes sent) of rack-tftp's HTTP boot server so far."""
    samples = scrape(port)
    return samples.get("metalbus_rack_tftp_http_boot_requests_total", 0.0), samples.get(
        "metalbus_rack_tftp_http_boot_bytes_sent_total", 0.0
    )


def stamp(payload: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(payload["at"]).replace("Z", "+00:00")).timestamp()


def event_handler(target: Target, timeline: Timeline) -> Callable[[Msg], Any]:
    """Marks the bus's steps of ``target`` from events.power/lease/result/machine."""

    async def on_event(msg: Msg) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            payload = json.loads(msg.data)
            kind = msg.subject.split(".")[1]
            if stamp(payload) < timeline.started:
                return
            if kind == "power" and payload["system_id"] == target.system_id and payload["state"] == "on":
                timeline.mark(POWER_ON, stamp(payload))
            elif kind == "lease" and mac_of(payload) == target.mac.lower() and payload["lease"]["state"] == "bound":
                timeline.mark(FIRMWARE_ACK, stamp(payload))
            elif kind == "result" and payload["system_id"] == target.system_id:
                timeline.mark(RESULTS, stamp(payload))
            elif kind == "machine" and payload["system_id"] == target.system_id:
                settle(timeline, payload)

    return on_event


def mac_of(payload: dict[str, Any]) -> str:
    return str(payload["lease"]["mac"]).lower()


def settle(timeline: Timeline, payload: dict[str, Any]) -> None:
    status = str(payload["to_status"]).upper()
    if status == "READY":
        timeline.mark(READY, stamp(payload))
    if status in ("READY", "FAILED_COMMISSIONING"):
        timeline.final_status = status


@contextlib.asynccontextmanager
async def events_of(nats_url: str, target: Target, timeline: Timeline) -> AsyncIterator[None]:
    """Subscribed to ``events.>`` while the block runs."""
    client: NatsClient = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        await client.subscribe("events.>", cb=event_handler(target, timeline))
        yield
    finally:
        await client.close()


@dataclass
class LocalWatch:
    """The steps seen on this machine: qemu's pid file, rack-tftp's counters, the serial log."""

    target: Target
    timeline: Timeline
    metrics_port: int
    baseline: tuple[float, float] = (0.0, 0.0)

    def look(self) -> None:
        if running_identity(self.target.machine_pid_file) is not None:
            self.timeline.mark(QEMU_STARTED)
        requests, sent = http_boot_totals(self.metrics_port)
        if requests > self.baseline[0]:
            self.timeline.mark(BOOT_CONFIG)
        if sent - self.baseline[1] >= self.target.image_bytes:
            self.timeline.mark(IMAGES_SENT)
        text = self.target.serial_log.read_text(errors="replace") if self.target.serial_log.exists() else ""
        for step, needle in SERIAL_STEPS.items():
            if needle in text:
                self.timeline.mark(step)

    async def until(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not done():
            await asyncio.to_thread(self.look)
            await asyncio.sleep(POLL_S)
        await asyncio.to_thread(self.look)


def qemu_stopped(target: Target) -> bool:
    return running_identity(target.machine_pid_file) is None


async def wait_powered_off(target: Target, timeout_s: float) -> bool:
    """The commissioning environment powers the VM off after signalling; True once qemu is gone."""
    for _ in range(int(timeout_s / POLL_S)):
        if qemu_stopped(target):
            return True
        await asyncio.sleep(POLL_S)
    return qemu_stopped(target)
