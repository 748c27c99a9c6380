"""Boot decisions against a real region, NATS and PostgreSQL: commission, boot local, or enlist an unknown MAC.

The test plays rack-tftp (it asks for boot configs) and sets machines up directly in the database, as the
commission action leaves them: COMMISSIONING with a deadline and a metadata token.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import TypeVar

import asyncpg
import pytest
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus, decode_reply
from metalbus.contracts.base import Message
from metalbus.contracts.boot import BootConfig, BootConfigQuery, BootResource, BootResourceListQuery
from metalbus.contracts.common import Architecture
from metalbus.contracts.errors import BadRequest, Conflict, NotFound
from metalbus.contracts.health import HealthQuery, RegionHealth
from metalbus.contracts.machines import BootPurpose, MachineAction, MachineEvent, MachineStatus
from metalbus.contracts.metadata import MetadataItem, MetadataRead, OAuthCredentials
from metalbus.subjects import (
    BOOT_CONFIG,
    BOOT_RESOURCE_LIST,
    BOOT_RESOURCE_SET,
    EVENTS_STREAM,
    METADATA_READ,
    REGION_HEALTH,
)
from metalbus_region.machine_rows import insert_machine
from metalbus_region.tokens import issue_token
from metalbus_region.transitions import apply_action
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

M = TypeVar("M", bound=Message)
RACK_ADDRESS = IPv4Address("10.20.0.2")
COMMISSIONING_IMAGE = BootResource(
    architecture=Architecture.AMD64_BIOS,
    purpose=BootPurpose.COMMISSIONING,
    kernel="images/amd64/ephemeral/vmlinuz",
    initrd="images/amd64/ephemeral/initrd.img",
    squashfs="images/amd64/ephemeral/squashfs",
    kernel_params="console=ttyS0,115200",
)
ENLISTMENT_IMAGE = BootResource(
    architecture=Architecture.AMD64_BIOS,
    purpose=BootPurpose.ENLISTMENT,
    kernel="images/amd64/enlist/vmlinuz",
    initrd="images/amd64/enlist/initrd.img",
    kernel_params="console=tty0",
)


def migrated(replica_id: str) -> Callable[[RegionHealth], bool]:
    def check(health: RegionHealth) -> bool:
        return (
            health.replica_id == replica_id
            and health.database_reachable
            and health.migration_level == health.migration_target
        )

    return check


@asynccontextmanager
async def region(nats: NatsServer, dsn: str, bus: Bus, *replica_ids: str) -> AsyncIterator[None]:
    """Region replicas (one unless told), once each has migrated its database and answers."""
    async with contextlib.AsyncExitStack() as replicas:
        for replica_id in replica_ids or ("r1",):
            await replicas.enter_async_context(running_region(nats, dsn, replica_id))
        for replica_id in replica_ids or ("r1",):
            await eventually(lambda: bus.request(REGION_HEALTH, HealthQuery(), timeout=2), migrated(replica_id))
        yield


@asynccontextmanager
async def database(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def new_machine(conn: asyncpg.Connection, mac: str, hostname: str | None = None) -> str:
    async with conn.transaction():
        machine = await insert_machine(conn, hostname=hostname, architecture=Architecture.AMD64_BIOS, boot_mac=mac)
    return machine.system_id


async def commissioning_machine(
    conn: asyncpg.Connection, mac: str, hostname: str | None = None, *, token_expires_at: datetime | None = None
) -> tuple[str, OAuthCredentials]:
    """A machine as the commission action leaves it: COMMISSIONING, a deadline, a metadata token."""
    system_id = await new_machine(conn, mac, hostname)
    async with conn.transaction():
        await apply_action(
            conn, system_id, MachineAction.COMMISSION, commissioning_deadline=datetime.now(UTC) + timedelta(hours=1)
        )
        credentials = await issue_token(conn, system_id, expires_at=token_expires_at)
    return system_id, credentials


async def ready_machine(conn: asyncpg.Connection, mac: str) -> str:
    system_id, _ = await commissioning_machine(conn, mac)
    async with conn.transaction():
        await apply_action(conn, system_id, MachineAction.COMMISSIONING_SUCCEEDED)
    return system_id


async def set_boot_images(bus: Bus, *resources: BootResource) -> None:
    for resource in resources or (COMMISSIONING_IMAGE, ENLISTMENT_IMAGE):
        await bus.request(BOOT_RESOURCE_SET, resource, timeout=5)


async def boot(
    bus: Bus,
    mac: str,
    rack_address: IPv4Address = RACK_ADDRESS,
    architecture: Architecture = Architecture.AMD64_BIOS,
    rack_http_port: int = 5248,
) -> BootConfig:
    query = BootConfigQuery(
        mac=mac, architecture=architecture, rack_id="rack-1", rack_address=rack_address, rack_http_port=rack_http_port
    )
    return await bus.request(BOOT_CONFIG, query, timeout=5)


def command_line_parameters(config: BootConfig) -> dict[str, str]:
    return dict(word.split("=", 1) for word in config.kernel_command_line.split(" ") if "=" in word)


def credentials_on(config: BootConfig) -> OAuthCredentials:
    parameters = command_line_parameters(config)
    return OAuthCredentials(
        consumer_key=parameters["metalbus.consumer_key"],
        token_key=parameters["metalbus.token_key"],
        token_secret=parameters["metalbus.token_secret"],
    )


async def stream_events(bus: Bus, subject: str, model: type[M], expected: int) -> list[M]:
    """The first ``expected`` events on ``subject`` in the JetStream stream (waits for the outbox to publish)."""
    subscription = await bus.client.jetstream().subscribe(
        subject, stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
    )
    try:
        return [model.from_json_bytes((await subscription.next_msg(timeout=10)).data) for _ in range(expected)]
    finally:
        await subscription.unsubscribe()


async def test_commissioning_machine_boots_the_commissioning_image_with_the_rack_address_and_its_own_credentials(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        system_id, issued = await commissioning_machine(conn, "52:54:00:00:00:01", "node-1")
        await commissioning_machine(conn, "52:54:00:00:00:02", "node-2")

        config = await boot(bus, "52-54-00-00-00-01")
        other_rack = await boot(bus, "52:54:00:00:00:01", rack_address=IPv4Address("10.30.0.2"))
        other_port = await boot(bus, "52:54:00:00:00:01", rack_http_port=15248)
        hostname = await bus.request(
            METADATA_READ, MetadataRead(credentials=credentials_on(config), item=MetadataItem.LOCAL_HOSTNAME)
        )

    assert (config.system_id, config.purpose) == (system_id, BootPurpose.COMMISSIONING)
    assert (config.kernel, config.initrd, config.squashfs) == (
        COMMISSIONING_IMAGE.kernel,
        COMMISSIONING_IMAGE.initrd,
        COMMISSIONING_IMAGE.squashfs,
    )
    assert config.kernel_command_line.startswith("console=ttyS0,115200 ")
    parameters = command_line_parameters(config)
    assert parameters["metalbus.purpose"] == "commissioning"
    assert parameters["metalbus.system_id"] == system_id
    assert parameters["metalbus.metadata_url"] == "http://10.20.0.2:5248/MAAS/metadata/"
    assert credentials_on(config) == issued
    assert command_line_parameters(other_rack)["metalbus.metadata_url"] == "http://10.30.0.2:5248/MAAS/metadata/"
    assert command_line_parameters(other_port)["metalbus.metadata_url"] == "http://10.20.0.2:15248/MAAS/metadata/"
    assert (hostname.system_id, hostname.content) == (system_id, "node-1")


async def test_machines_that_are_not_commissioning_or_enlisting_boot_their_local_disk(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        ready = await ready_machine(conn, "52:54:00:00:00:01")
        new = await new_machine(conn, "52:54:00:00:00:02")
        configs = [await boot(bus, "52:54:00:00:00:01"), await boot(bus, "52:54:00:00:00:02")]
        machines = await conn.fetchval("SELECT count(*) FROM machines")

    assert [(c.system_id, c.purpose) for c in configs] == [(ready, BootPurpose.LOCAL), (new, BootPurpose.LOCAL)]
    for config in configs:
        assert (config.kernel, config.initrd, config.squashfs, config.kernel_command_line) == (None, None, None, "")
    assert machines == 2


async def test_a_machine_booting_from_another_of_its_nics_is_found_not_enlisted(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        system_id, _ = await commissioning_machine(conn, "52:54:00:00:00:01")
        await conn.execute(
            "INSERT INTO machine_interfaces (system_id, name, mac) VALUES ($1, 'eth1', '52:54:00:00:00:99')", system_id
        )
        config = await boot(bus, "52:54:00:00:00:99")
        machines = await conn.fetchval("SELECT count(*) FROM machines")

    assert (config.system_id, config.purpose) == (system_id, BootPurpose.COMMISSIONING)
    assert machines == 1


async def test_an_unknown_mac_is_enlisted_as_a_new_machine_with_its_event(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        config = await boot(bus, "52:54:00:0A:0B:0C")
        row = await conn.fetchrow(
            "SELECT system_id, status, architecture, boot_mac::text AS mac, power_type, boot_purpose FROM machines"
        )
        [event] = await stream_events(bus, f"events.machine.{config.system_id}", MachineEvent, 1)
        again = await boot(bus, "52:54:00:0a:0b:0c")  # a retransmit, another rack, or a reboot while enlisting
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM machines) AS machines, (SELECT count(*) FROM events) AS events"
        )

    assert config.purpose is BootPurpose.ENLISTMENT
    assert (config.kernel, config.initrd, config.squashfs) == (ENLISTMENT_IMAGE.kernel, ENLISTMENT_IMAGE.initrd, None)
    assert config.kernel_command_line == (
        f"console=tty0 metalbus.purpose=enlistment metalbus.system_id={config.system_id} "
        "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/enlist/ metalbus.syslog=10.20.0.2:5247"
    )
    assert row is not None and counts is not None
    assert dict(row) == {
        "system_id": config.system_id,
        "status": "new",
        "architecture": "amd64/bios",
        "mac": "52:54:00:0a:0b:0c",
        "power_type": "manual",
        "boot_purpose": "enlistment",
    }
    assert (event.system_id, event.from_status, event.to_status) == (config.system_id, None, MachineStatus.NEW)
    assert event.reason is not None and "rack-1" in event.reason
    assert again == config
    assert tuple(counts) == (1, 1)


async def test_concurrent_boots_of_one_unknown_mac_enlist_it_once(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus, "r1", "r2"), database(database_dsn) as conn:
        await set_boot_images(bus)
        configs = await asyncio.gather(*(boot(bus, "52:54:00:0a:0b:0c") for _ in range(12)))
        machines = await conn.fetch("SELECT system_id FROM machines")
        events = await conn.fetchval("SELECT count(*) FROM events WHERE subject LIKE 'events.machine.%'")

    assert len(machines) == 1 and events == 1
    assert {(c.system_id, c.purpose) for c in configs} == {(machines[0]["system_id"], BootPurpose.ENLISTMENT)}


async def test_with_enlistment_switched_off_an_unknown_mac_boots_local_and_nothing_is_created(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        await conn.execute("UPDATE region_settings SET value = 'false' WHERE name = 'enlistment_enabled'")
        config = await boot(bus, "52:54:00:0a:0b:0c")
        machines = await conn.fetchval("SELECT count(*) FROM machines")
        events = await conn.fetchval("SELECT count(*) FROM events")

    assert (config.system_id, config.purpose, config.kernel) == (None, BootPurpose.LOCAL, None)
    assert (machines, events) == (0, 0)


async def test_a_missing_boot_resource_is_not_found_naming_architecture_and_purpose(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)  # amd64/bios only
        await commissioning_machine(conn, "52:54:00:00:00:01")
        with pytest.raises(NotFound, match="amd64/uefi and purpose commissioning"):
            await boot(bus, "52:54:00:00:00:01", architecture=Architecture.AMD64_UEFI)
        with pytest.raises(NotFound, match="arm64/uefi and purpose enlistment"):
            await boot(bus, "52:54:00:0a:0b:0c", architecture=Architecture.ARM64_UEFI)
        machines = await conn.fetchval("SELECT count(*) FROM machines")

    assert machines == 1  # the unknown MAC was not enlisted without an image to boot


async def test_a_commissioning_machine_whose_token_expired_is_a_conflict_not_a_boot_without_credentials(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        expired = datetime.now(UTC) - timedelta(seconds=1)
        system_id, _ = await commissioning_machine(conn, "52:54:00:00:00:01", token_expires_at=expired)
        with pytest.raises(Conflict, match=f"{system_id} is commissioning without valid metadata credentials"):
            await boot(bus, "52:54:00:00:00:01")


async def test_boot_resources_are_set_once_per_architecture_and_purpose_and_listed(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), database(database_dsn) as conn:
        await set_boot_images(bus)
        newer = COMMISSIONING_IMAGE.model_copy(update={"kernel": "images/amd64/v2/vmlinuz", "squashfs": None})
        stored = await bus.request(BOOT_RESOURCE_SET, newer, timeout=5)
        listed = (await bus.request(BOOT_RESOURCE_LIST, BootResourceListQuery(), timeout=5)).resources
        with pytest.raises(BadRequest, match="unbalanced double quote"):
            await bus.request(
                BOOT_RESOURCE_SET, ENLISTMENT_IMAGE.model_copy(update={"kernel_params": 'x="open'}), timeout=5
            )
        escaping = ENLISTMENT_IMAGE.model_dump(mode="json") | {"kernel": "../../etc/shadow"}
        raw = await bus.client.request(BOOT_RESOURCE_SET.pattern, json.dumps(escaping).encode(), timeout=5)
        with pytest.raises(BadRequest, match="kernel"):
            decode_reply(BootResource, raw)
        rows = await conn.fetch("SELECT purpose, kernel, kernel_params FROM boot_resources ORDER BY purpose")

    assert stored == newer
    assert listed == [newer, ENLISTMENT_IMAGE]
    assert [tuple(row) for row in rows] == [
        ("commissioning", "images/amd64/v2/vmlinuz", "console=ttyS0,115200"),
        ("enlistment", "images/amd64/enlist/vmlinuz", "console=tty0"),
    ]
