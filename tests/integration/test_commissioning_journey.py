"""The region's whole commissioning journey through NATS requests alone: NEW → COMMISSIONING → READY.

The test plays every other party: the operator (create, commission), the rack's power service (answers the
power-on), the rack's TFTP (asks for the boot config), and the machine itself (reads its metadata with the
credentials from its kernel command line, posts its inventory, signals OK). Only the region runs for real.
"""

import json

import asyncpg
from nats.js.api import DeliverPolicy

from metalbus.bus import Bus
from metalbus.contracts.boot import BootConfigQuery, BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import (
    BootPurpose,
    MachineAction,
    MachineActionRequest,
    MachineCreate,
    MachineEvent,
    MachineQuery,
    MachineStatus,
    PowerType,
)
from metalbus.contracts.metadata import (
    MetadataItem,
    MetadataRead,
    MetadataSignal,
    OAuthCredentials,
    ScriptResult,
    SignalStatus,
)
from metalbus.contracts.power import PowerAction, PowerCommand, PowerResult, PowerState
from metalbus.contracts.racks import RackServiceAnnouncement
from metalbus.subjects import (
    BOOT_CONFIG,
    BOOT_RESOURCE_SET,
    EVENTS_STREAM,
    MACHINE_ACTION,
    MACHINE_CREATE,
    MACHINE_GET,
    METADATA_READ,
    METADATA_SIGNAL,
    RACK_ANNOUNCE,
    RACK_POWER_COMMAND,
)
from tests.conftest import NatsServer
from tests.integration.test_region import eventually, running_region

INVENTORY = {
    "cpu_model": "QEMU Virtual CPU version 2.5+",
    "cpu_count": 2,
    "cpu_speed_mhz": 2400,
    "memory_mib": 2048,
    "block_devices": [{"name": "vda", "size_bytes": 10737418240, "model": "", "serial": "disk-1"}],
    "interfaces": [{"name": "ens3", "mac": "52:54:00:aa:bb:01", "link_up": True, "speed_mbps": 1000}],
    "lldp_neighbours": [
        {"interface": "ens3", "chassis_id": "aa:bb:cc:00:00:01", "port_id": "swp7", "system_name": "tor-1"}
    ],
}


def credentials_from(command_line: str) -> OAuthCredentials:
    words = dict(word.split("=", 1) for word in command_line.split() if word.startswith("metalbus."))
    return OAuthCredentials(
        consumer_key=words["metalbus.consumer_key"],
        token_key=words["metalbus.token_key"],
        token_secret=words["metalbus.token_secret"],
    )


async def test_a_machine_is_commissioned_to_ready_through_nats_alone(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    power_commands: list[PowerCommand] = []

    async def rack_power(command: PowerCommand) -> PowerResult:
        power_commands.append(command)
        return PowerResult(system_id=command.system_id, state=PowerState.ON)

    async with running_region(nats_server, database_dsn, "r1"):
        # The rack: its power service reaches the BMC network, its TFTP side will ask for boot configs.
        rack = RackServiceAnnouncement.model_validate(
            {"rack_id": "rack-a", "service": "rack-power", "hostname": "rack-a", "version": "0.1.0",
             "heartbeat_interval_s": 30, "interfaces": ["10.0.0.2/24", "10.20.0.2/24"]}
        )  # fmt: skip
        await eventually(lambda: bus.request(RACK_ANNOUNCE, rack, timeout=2), lambda ack: ack.known)
        await bus.serve(RACK_POWER_COMMAND, rack_power, subscribe_to=RACK_POWER_COMMAND.format(rack_id="rack-a"))
        await bus.request(
            BOOT_RESOURCE_SET,
            BootResource(
                architecture=Architecture.AMD64_BIOS,
                purpose=BootPurpose.COMMISSIONING,
                kernel="images/amd64/ephemeral/vmlinuz",
                initrd="images/amd64/ephemeral/initrd.img",
                squashfs="images/amd64/ephemeral/squashfs",
                kernel_params="console=ttyS0,115200",
            ),
        )

        # The operator adds the machine and commissions it.
        machine = await bus.request(
            MACHINE_CREATE,
            MachineCreate(
                hostname="node-journey",
                boot_mac="52:54:00:aa:bb:01",
                power_type=PowerType.IPMI,
                power_parameters={"address": "10.0.0.21", "port": 623, "username": "admin"},
                power_secrets={"password": "bmc-secret"},
            ),
        )
        assert machine.status is MachineStatus.NEW
        commissioning = await bus.request(
            MACHINE_ACTION,
            MachineActionRequest(system_id=machine.system_id, action=MachineAction.COMMISSION),
            timeout=15,
        )
        assert commissioning.status is MachineStatus.COMMISSIONING
        [power_on] = power_commands
        assert (power_on.action, power_on.secrets) == (PowerAction.ON, {"password": "bmc-secret"})

        # The machine PXE-boots: the rack asks what it boots.
        boot = await bus.request(
            BOOT_CONFIG,
            BootConfigQuery(
                mac="52-54-00-AA-BB-01",
                architecture=Architecture.AMD64_BIOS,
                rack_id="rack-a",
                rack_address="10.20.0.2",
            ),
        )
        assert (boot.purpose, boot.system_id) == (BootPurpose.COMMISSIONING, machine.system_id)
        assert "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/" in boot.kernel_command_line
        credentials = credentials_from(boot.kernel_command_line)

        # The ephemeral environment reads its metadata, runs its scripts and reports.
        hostname = await bus.request(
            METADATA_READ, MetadataRead(credentials=credentials, item=MetadataItem.LOCAL_HOSTNAME)
        )
        assert hostname.content == "node-journey"
        ack = await bus.request(
            METADATA_SIGNAL,
            MetadataSignal(
                credentials=credentials,
                status=SignalStatus.OK,
                results=[
                    ScriptResult(name="metalbus-inventory", exit_status=0, stdout=json.dumps(INVENTORY), runtime_s=2)
                ],
            ),
        )
        assert ack.status is MachineStatus.READY
        assert (await bus.request(MACHINE_GET, MachineQuery(system_id=machine.system_id))).status is (
            MachineStatus.READY
        )

        # Every transition is on the event stream, in order.
        subscription = await bus.client.jetstream().subscribe(
            f"events.machine.{machine.system_id}", stream=EVENTS_STREAM.name, deliver_policy=DeliverPolicy.ALL
        )
        transitions = []
        for _ in range(3):
            event = MachineEvent.from_json_bytes((await subscription.next_msg(timeout=5)).data)
            transitions.append((event.from_status, event.to_status))
        assert transitions == [
            (None, MachineStatus.NEW),
            (MachineStatus.NEW, MachineStatus.COMMISSIONING),
            (MachineStatus.COMMISSIONING, MachineStatus.READY),
        ]

    # The inventory is in PostgreSQL.
    conn = await asyncpg.connect(database_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT cpu_model, cpu_count, memory_mib, lldp_neighbours::text FROM hardware_inventory "
            "WHERE system_id = $1",
            machine.system_id,
        )
        assert row is not None
        assert (row["cpu_model"], row["cpu_count"], row["memory_mib"]) == ("QEMU Virtual CPU version 2.5+", 2, 2048)
        assert json.loads(row["lldp_neighbours"])[0]["system_name"] == "tor-1"
        nics = await conn.fetch(
            "SELECT name, mac::text FROM machine_interfaces WHERE system_id = $1", machine.system_id
        )
        assert [(n["name"], n["mac"]) for n in nics] == [("ens3", "52:54:00:aa:bb:01")]
    finally:
        await conn.close()
