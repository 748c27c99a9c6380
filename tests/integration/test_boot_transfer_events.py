"""The boot files a rack sends are events of the machine that fetched them: rack-tftp (as its ``__main__`` runs
it) reports each finished TFTP and HTTP transfer; the region attributes it by the lease on the client's address.

Real clients fetch from inside a namespace holding the machine's leased address: tftp-hpa over TFTP, curl over
HTTP. A fetch from an address no machine holds is counted by the rack and the region, and published for nobody.
"""

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.boot import BootTransferEvent
from metalbus.contracts.machines import Machine, MachineCreate
from metalbus.subjects import EVENT_BOOT_TRANSFER, EVENTS_STREAM, MACHINE_CREATE
from metalbus_rack_tftp.__main__ import run_rack_tftp
from metalbus_rack_tftp.settings import RackTftpSettings
from tests.conftest import NatsServer, free_port
from tests.integration.test_leases import create_subnet, offer_and_commit
from tests.integration.test_rack_services_running import scrape
from tests.integration.test_syslog_relay import MachineLink, machine_link, region, run_sync

__all__ = ["machine_link", "region"]  # fixtures

pytestmark = pytest.mark.skipif(
    shutil.which("tftp") is None or shutil.which("curl") is None,
    reason="tftp-hpa and curl are installed by scripts/setup.sh --test",
)

KERNEL = b"k" * 70_000  # more than one TFTP window, more than one HTTP chunk


@dataclass(frozen=True)
class Rack:
    address: str
    tftp_port: int
    http_port: int
    metrics_port: int


@pytest.fixture
async def rack(nats_server: NatsServer, region: Bus, machine_link: MachineLink, tmp_path: Path) -> AsyncIterator[Rack]:
    (tmp_path / "boot" / "images").mkdir(parents=True)
    (tmp_path / "boot" / "images" / "vmlinuz").write_bytes(KERNEL)
    settings = RackTftpSettings(
        nats_url=nats_server.url,
        listen_address=machine_link.rack_address,
        port=free_port(),
        http_port=free_port(),
        boot_root=tmp_path / "boot",
        metrics_port=free_port(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_rack_tftp(settings, stop))
    try:
        yield Rack(machine_link.rack_address, settings.port, settings.http_port, settings.metrics_port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def leased_machine(region: Bus, link: MachineLink) -> tuple[Machine, IPv4Address]:
    machine = await region.request(MACHINE_CREATE, MachineCreate(boot_mac=link.mac), timeout=5)
    prefix = link.prefix
    await create_subnet(
        region, f"{prefix}.0/24", gateway=f"{prefix}.1", dns_servers=[f"{prefix}.2"],
        dynamic_start=f"{prefix}.100", dynamic_end=f"{prefix}.199",
    )  # fmt: skip
    lease = await offer_and_commit(region, link.mac, link=IPv4Address(link.rack_address))
    run_sync("ip", "-n", link.namespace, "addr", "add", f"{lease.ip}/24", "dev", link.machine_if)
    return machine, lease.ip


async def in_namespace(namespace: str, *argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, output.decode(errors="replace")


async def boot_events(bus: Bus, system_id: str, expected: int, wait_s: float = 10) -> list[BootTransferEvent]:
    subject = EVENT_BOOT_TRANSFER.format(system_id=system_id)
    subscription = await bus.client.jetstream().subscribe(
        subject, stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    events: list[BootTransferEvent] = []
    with contextlib.suppress(TimeoutError):
        while len(events) < expected:
            events.append(BootTransferEvent.from_json_bytes((await subscription.next_msg(timeout=wait_s)).data))
    await subscription.unsubscribe()
    return events


async def test_files_a_machine_fetches_over_tftp_and_http_are_its_boot_events(
    region: Bus, machine_link: MachineLink, rack: Rack, tmp_path: Path
) -> None:
    machine, address = await leased_machine(region, machine_link)
    namespace = machine_link.namespace

    await in_namespace(
        namespace, "tftp", "-m", "binary", rack.address, str(rack.tftp_port),
        "-c", "get", "images/vmlinuz", str(tmp_path / "over-tftp"),
    )  # fmt: skip
    await in_namespace(
        namespace,
        "curl",
        "-sSf",
        "-o",
        str(tmp_path / "over-http"),
        f"http://{rack.address}:{rack.http_port}/images/vmlinuz",
    )

    events = await boot_events(region, machine.system_id, 2)
    assert (tmp_path / "over-tftp").read_bytes() == (tmp_path / "over-http").read_bytes() == KERNEL
    seen = sorted((e.protocol, e.path, e.client_ip, e.size_bytes, e.completed, e.rack_id) for e in events)
    assert seen == [
        ("http", "images/vmlinuz", address, len(KERNEL), True, "rack-1"),
        ("tftp", "images/vmlinuz", address, len(KERNEL), True, "rack-1"),
    ]
    assert {event.system_id for event in events} == {machine.system_id}


async def test_a_fetch_from_an_address_no_machine_holds_is_counted_and_published_for_nobody(
    region: Bus, machine_link: MachineLink, rack: Rack, tmp_path: Path
) -> None:
    machine, _ = await leased_machine(region, machine_link)
    other = f"{machine_link.prefix}.250"  # in the subnet, leased to nobody
    run_sync("ip", "-n", machine_link.namespace, "addr", "add", f"{other}/24", "dev", machine_link.machine_if)

    await in_namespace(
        machine_link.namespace, "curl", "-sSf", "--interface", other, "-o", str(tmp_path / "kernel"),
        f"http://{rack.address}:{rack.http_port}/images/vmlinuz",
    )  # fmt: skip

    async def reported() -> dict[str, float]:
        return await asyncio.to_thread(scrape, rack.metrics_port)

    deadline = asyncio.get_running_loop().time() + 10
    counted = await reported()
    while counted.get("metalbus_rack_tftp_transfer_reports_reported_total", 0) < 1:
        assert asyncio.get_running_loop().time() < deadline, counted
        await asyncio.sleep(0.2)
        counted = await reported()
    assert counted["metalbus_rack_tftp_transfer_reports_attributed_total"] == 0
    assert await boot_events(region, machine.system_id, 1, wait_s=2) == []  # the outbox publishes within ~0.1 s
