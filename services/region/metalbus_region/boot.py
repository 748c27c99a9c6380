"""Boot decisions for PXE-booting machines (and the boot resources they use): commission, enlist or boot local.

Given (MAC, architecture, rack address) the region answers, in one transaction:

- a known machine (its boot MAC, or a MAC it reported as one of its interfaces) that is COMMISSIONING boots the
  (architecture, commissioning) resource with the metadata URL on that rack and its own credentials on the
  kernel command line (the parameters are described in ``kernel_command_line``);
- an unknown MAC is enlisted, as MAAS does: a NEW machine (that architecture, that boot MAC, manual power, boot
  purpose enlistment) and its machine event, then the (architecture, enlistment) resource with the anonymous
  enlistment URL. Requests for the same unknown MAC at once create one machine (the unique boot MAC decides).
  The machine keeps booting the enlistment image while it is NEW with boot purpose enlistment, so every query
  for one boot (TFTP retransmits, pxelinux's several config names, two racks on one subnet) gets the same
  answer; commissioning (and the enlistment intake, when it comes) sets the purpose anew. With the region setting
  ``enlistment_enabled`` = false an unknown MAC boots local and nothing is created;
- any other known machine boots from its local disk (no kernel, initrd or squashfs).

A needed boot resource that is missing is NotFound naming architecture and purpose (nothing is enlisted then).
A commissioning machine without valid credentials is a Conflict: only commissioning it again issues new ones.
"""

import structlog

from metalbus.contracts.boot import BootConfig, BootConfigQuery, BootResource, BootResourceList, BootResourceListQuery
from metalbus.contracts.errors import BadRequest, Conflict
from metalbus.contracts.machines import BootPurpose, MachineStatus
from metalbus.db.pool import DbConnection
from metalbus.subjects import BOOT_CONFIG, BOOT_RESOURCE_LIST, BOOT_RESOURCE_SET
from metalbus_region import boot_store
from metalbus_region.context import RegionContext, Route
from metalbus_region.kernel_command_line import (
    KernelCommandLineError,
    Parameter,
    commissioning_parameters,
    enlistment_parameters,
    render_kernel_command_line,
    split_kernel_parameters,
)
from metalbus_region.machine_rows import insert_machine
from metalbus_region.tokens import current_token
from metalbus_region.transitions import record_machine_event

log = structlog.get_logger("metalbus.region.boot")


def routes(ctx: RegionContext) -> list[Route]:
    area = BootArea(ctx)
    return [
        (BOOT_CONFIG, area.boot_config),
        (BOOT_RESOURCE_SET, area.set_resource),
        (BOOT_RESOURCE_LIST, area.list_resources),
    ]


class BootArea:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database
        self.outbox = ctx.outbox

    async def boot_config(self, query: BootConfigQuery) -> BootConfig:
        async with self.database.connection() as conn, conn.transaction():
            config = await decide_boot(conn, query)
        self.outbox.wake()  # an enlistment recorded its machine event
        log.info(
            "boot.decided", mac=query.mac, rack_id=query.rack_id, system_id=config.system_id, purpose=config.purpose
        )
        return config

    async def set_resource(self, resource: BootResource) -> BootResource:
        try:
            split_kernel_parameters(resource.kernel_params)
        except KernelCommandLineError as error:
            raise BadRequest(str(error)) from error
        async with self.database.connection() as conn:
            return await boot_store.upsert_resource(conn, resource)

    async def list_resources(self, _: BootResourceListQuery) -> BootResourceList:
        async with self.database.connection() as conn:
            return BootResourceList(resources=await boot_store.list_resources(conn))


async def decide_boot(conn: DbConnection, query: BootConfigQuery) -> BootConfig:
    """Run inside the caller's transaction: what ``query.mac`` boots, enlisting it if it is unknown."""
    machine = await boot_store.machine_by_mac(conn, query.mac)
    if machine is None:
        return await _enlist(conn, query)
    if machine.status is MachineStatus.COMMISSIONING:
        return await _commissioning_boot(conn, query, machine.system_id)
    if machine.status is MachineStatus.NEW and machine.boot_purpose is BootPurpose.ENLISTMENT:
        return await _enlistment_boot(conn, query, machine.system_id)
    return _local_boot(machine.system_id)


async def _commissioning_boot(conn: DbConnection, query: BootConfigQuery, system_id: str) -> BootConfig:
    credentials = await current_token(conn, system_id)
    if credentials is None:
        raise Conflict(f"machine {system_id} is commissioning without valid metadata credentials; commission again")
    resource = await boot_store.find_resource(conn, query.architecture, BootPurpose.COMMISSIONING)
    parameters = commissioning_parameters(
        query.rack_address, system_id, credentials, query.rack_http_port, syslog_port=query.rack_syslog_port
    )
    return _network_boot(resource, system_id, parameters)


async def _enlist(conn: DbConnection, query: BootConfigQuery) -> BootConfig:
    if not await boot_store.enlistment_enabled(conn):
        return _local_boot(None)
    await boot_store.find_resource(conn, query.architecture, BootPurpose.ENLISTMENT)  # nothing to boot: no machine
    try:
        machine = await insert_machine(
            conn,
            hostname=None,
            architecture=query.architecture,
            boot_mac=query.mac,
            boot_purpose=BootPurpose.ENLISTMENT,
        )
    except Conflict:
        # Another request enlisted this MAC at the same moment; its row is committed, so we see it now.
        if await boot_store.machine_by_mac(conn, query.mac) is None:
            raise
        return await decide_boot(conn, query)
    system_id = machine.system_id
    await record_machine_event(
        conn,
        system_id,
        action=None,
        from_status=None,
        to_status=MachineStatus.NEW,
        reason=f"enlisted: PXE boot of {query.mac} ({query.architecture.value}) through rack {query.rack_id}",
    )
    log.info("boot.enlisted", mac=query.mac, rack_id=query.rack_id, system_id=system_id)
    return await _enlistment_boot(conn, query, system_id)


async def _enlistment_boot(conn: DbConnection, query: BootConfigQuery, system_id: str) -> BootConfig:
    resource = await boot_store.find_resource(conn, query.architecture, BootPurpose.ENLISTMENT)
    parameters = enlistment_parameters(
        query.rack_address, system_id, query.rack_http_port, syslog_port=query.rack_syslog_port
    )
    return _network_boot(resource, system_id, parameters)


def _network_boot(resource: BootResource, system_id: str, parameters: list[Parameter]) -> BootConfig:
    return BootConfig(
        system_id=system_id,
        purpose=resource.purpose,
        kernel=resource.kernel,
        initrd=resource.initrd,
        squashfs=resource.squashfs,
        kernel_command_line=render_kernel_command_line(resource.kernel_params, parameters),
    )


def _local_boot(system_id: str | None) -> BootConfig:
    return BootConfig(
        system_id=system_id, purpose=BootPurpose.LOCAL, kernel=None, initrd=None, squashfs=None, kernel_command_line=""
    )
