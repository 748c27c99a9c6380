"""Boot transfers a rack reports: each file a machine fetched (TFTP or HTTP) becomes an event on its subject.

A transfer belongs to the machine whose boot MAC holds a bound, unexpired lease on the client's address when the
report arrives (the firmware and the ephemeral environment both fetch from the address DHCP gave them). Transfers
no machine holds the address of (an operator's curl, a machine whose lease ran out) are counted in the reply and
not kept. A report with a ``batch_id`` is taken once however often the rack retries it.
"""

from collections.abc import Callable
from datetime import datetime

from metalbus.contracts.boot import BootTransfer, BootTransferAck, BootTransferEvent, BootTransferReport
from metalbus.db.pool import DbConnection
from metalbus.subjects import BOOT_TRANSFERS, EVENT_BOOT_TRANSFER
from metalbus_region.context import RegionContext, Route
from metalbus_region.idempotency import apply_once
from metalbus_region.lease_store import machines_by_address
from metalbus_region.outbox import record_events


def routes(ctx: RegionContext) -> list[Route]:
    intake = BootTransferIntake(ctx)
    return [(BOOT_TRANSFERS, intake.report)]


class BootTransferIntake:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database
        self.outbox = ctx.outbox

    async def report(self, report: BootTransferReport) -> BootTransferAck:
        if not report.transfers:
            return BootTransferAck(received=0, attributed=0)
        async with self.database.connection() as conn:
            ack = await apply_once(
                conn, report.batch_id, BOOT_TRANSFERS.pattern, BootTransferAck, lambda c: record_transfers(c, report)
            )
        self.outbox.wake()
        return ack


async def record_transfers(conn: DbConnection, report: BootTransferReport) -> BootTransferAck:
    owners = await machines_by_address(conn, (transfer.client_ip for transfer in report.transfers))
    builds = [
        (event_builder(report.rack_id, owners[transfer.client_ip], transfer), {"system_id": owners[transfer.client_ip]})
        for transfer in report.transfers
        if transfer.client_ip in owners
    ]
    await record_events(conn, EVENT_BOOT_TRANSFER, builds)
    return BootTransferAck(received=len(report.transfers), attributed=len(builds))


def event_builder(rack_id: str, system_id: str, transfer: BootTransfer) -> Callable[[int, datetime], BootTransferEvent]:
    def build(sequence: int, at: datetime) -> BootTransferEvent:
        return BootTransferEvent(
            sequence=sequence,
            system_id=system_id,
            rack_id=rack_id,
            protocol=transfer.protocol,
            path=transfer.path,
            client_ip=transfer.client_ip,
            size_bytes=transfer.size_bytes,
            completed=transfer.completed,
            duration_s=transfer.duration_s,
            at=at,
        )

    return build
