"""The metadata service behind the racks' proxies: a machine reads its meta-data and posts its results.

Every request carries the machine's OAuth credentials; ``tokens.machine_for_token`` turns them into the one
machine they belong to (unknown, wrong secret, revoked or expired → Forbidden), and nothing else is read or
written. Items, as cloud-init's MAAS datasource reads them under ``<ver>/meta-data/``:

- ``instance-id`` the system id; ``local-hostname`` the hostname; ``public-keys`` empty (no keys yet);
- ``vendor-data`` the small ``#cloud-config`` below: no password SSH logins, no root login, /etc/hosts managed;
- ``user-data`` while COMMISSIONING, the commissioning runner (``commissioning_script.sh``, POSIX sh: gathers the
  hardware inventory from /proc and /sys and signals it back); otherwise there is none (NotFound, HTTP 404, which
  cloud-init takes as "no user-data").

A signal stores every script result (with its event). The result ``metalbus-inventory`` with exit status 0 holds
the HardwareInventory, stored with the machine's interfaces. While the machine is COMMISSIONING: a failed
script, an invalid inventory or status FAILED fail commissioning with a reason naming them; OK succeeds if an
inventory arrived during this commissioning, and fails with "no hardware inventory received" if not; WORKING and
COMMISSIONING only store. Leaving commissioning revokes the machine's token and sets its boot purpose back to
local (``machine_store.leave_commissioning``). A final OK/FAILED for a machine that is not commissioning is
InvalidTransition, and its results are stored all the same.

A status report (cloud-init's MAAS reporter, ``status/<system_id>``) for the token's own machine is recorded as an
event on ``events.cloud-init.<system_id>`` and changes nothing else; for another machine it is Forbidden.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources

from metalbus.contracts.errors import Forbidden, InvalidTransition, NotFound
from metalbus.contracts.machines import MachineAction, MachineStatus
from metalbus.contracts.metadata import (
    INVENTORY_RESULT_NAME,
    MetadataItem,
    MetadataRead,
    MetadataReadEvent,
    MetadataSignal,
    MetadataStatusReport,
    MetadataValue,
    SignalAck,
    SignalStatus,
    StatusReportAck,
    StatusReportEvent,
)
from metalbus.contracts.scripts import CommissioningScript
from metalbus.db.pool import DbConnection
from metalbus.subjects import EVENT_CLOUD_INIT, EVENT_METADATA_READ, METADATA_READ, METADATA_SIGNAL, METADATA_STATUS
from metalbus_region import results_store
from metalbus_region.context import RegionContext, Route
from metalbus_region.machine_store import leave_commissioning
from metalbus_region.outbox import record_event
from metalbus_region.scripts import chosen_scripts, render_user_scripts
from metalbus_region.tokens import machine_for_token, machine_whose_run_this_token_ended
from metalbus_region.transitions import apply_action

VENDOR_DATA = """#cloud-config
# metalbus: the ephemeral environment takes no passwords and no root logins; cloud-init keeps /etc/hosts.
ssh_pwauth: false
disable_root: true
manage_etc_hosts: true
"""
MAX_REASON = 1000
FINAL_STATUSES = frozenset({SignalStatus.OK, SignalStatus.FAILED})
REPEATED_SIGNAL_GRACE_S = 600.0
"""How long after a final signal ended commissioning the same signal, sent again (its answer was lost: NATS or a
region replica went away mid-request), is answered as the first was instead of with 403."""
OUTCOME_OF = {SignalStatus.OK: MachineStatus.READY, SignalStatus.FAILED: MachineStatus.FAILED_COMMISSIONING}


@cache
def commissioning_script() -> str:
    """The commissioning runner served as user-data (read once from the package)."""
    return resources.files("metalbus_region").joinpath("commissioning_script.sh").read_text(encoding="utf-8")


def routes(ctx: RegionContext) -> list[Route]:
    commissioning_script()  # read the file now, not on the event loop during a request
    area = MetadataArea(ctx)
    return [(METADATA_READ, area.read), (METADATA_SIGNAL, area.signal), (METADATA_STATUS, area.status_report)]


@dataclass(frozen=True)
class SignalOutcome:
    system_id: str
    status: MachineStatus
    refusal: str | None = None  # raised as InvalidTransition once the stored results are committed


class MetadataArea:
    def __init__(self, ctx: RegionContext) -> None:
        self.database = ctx.database
        self.outbox = ctx.outbox

    async def read(self, request: MetadataRead) -> MetadataValue:
        """The item's content for the token's machine; the read itself is recorded as an event."""
        async with self.database.connection() as conn, conn.transaction():
            system_id = await machine_for_token(conn, request.credentials)
            row = await conn.fetchrow("SELECT hostname, status FROM machines WHERE system_id = $1", system_id)
            assert row is not None  # tokens are deleted with their machine
            scripts = await chosen_scripts(conn, system_id) if request.item is MetadataItem.USER_DATA else []
            await record_event(
                conn,
                EVENT_METADATA_READ,
                lambda sequence, at: MetadataReadEvent(
                    sequence=sequence, system_id=system_id, item=request.item, at=at
                ),
                system_id=system_id,
            )
        self.outbox.wake()
        content = item_content(request.item, system_id, row["hostname"], MachineStatus(row["status"]), scripts)
        return MetadataValue(system_id=system_id, item=request.item, content=content)

    async def signal(self, signal: MetadataSignal) -> SignalAck:
        async with self.database.connection() as conn, conn.transaction():
            outcome = await take_signal(conn, signal)
        self.outbox.wake()
        if outcome.refusal is not None:
            raise InvalidTransition(outcome.refusal)
        return SignalAck(system_id=outcome.system_id, status=outcome.status)

    async def status_report(self, report: MetadataStatusReport) -> StatusReportAck:
        async with self.database.connection() as conn, conn.transaction():
            system_id = await machine_for_token(conn, report.credentials)
            if system_id != report.system_id:
                raise Forbidden(f"the credentials are not machine {report.system_id}'s")
            await record_event(
                conn,
                EVENT_CLOUD_INIT,
                lambda sequence, at: status_report_event(report, sequence, at),
                system_id=system_id,
            )
        self.outbox.wake()
        return StatusReportAck(system_id=system_id)


def status_report_event(report: MetadataStatusReport, sequence: int, at: datetime) -> StatusReportEvent:
    reported_at = None if report.timestamp is None else datetime.fromtimestamp(report.timestamp, UTC)
    return StatusReportEvent(
        sequence=sequence,
        system_id=report.system_id,
        event_type=report.event_type,
        origin=report.origin,
        name=report.name,
        description=report.description,
        result=report.result,
        reported_at=reported_at,
        at=at,
    )


def item_content(
    item: MetadataItem,
    system_id: str,
    hostname: str,
    status: MachineStatus,
    scripts: Sequence[CommissioningScript] = (),
) -> str:
    if item is MetadataItem.INSTANCE_ID:
        return system_id
    if item is MetadataItem.LOCAL_HOSTNAME:
        return hostname
    if item is MetadataItem.PUBLIC_KEYS:
        return ""
    if item is MetadataItem.VENDOR_DATA:
        return VENDOR_DATA
    if status is MachineStatus.COMMISSIONING:
        return render_user_scripts(commissioning_script(), scripts)
    raise NotFound(f"no user-data for machine {system_id}: it is {status.value}, not commissioning")


async def take_signal(conn: DbConnection, signal: MetadataSignal) -> SignalOutcome:
    """Run inside the caller's transaction: store the results, then move the machine if the signal says so."""
    try:
        system_id = await machine_for_token(conn, signal.credentials)
    except Forbidden:
        repeated = await _repeated_final_signal(conn, signal)
        if repeated is None:
            raise
        return repeated
    status = MachineStatus(
        await conn.fetchval("SELECT status FROM machines WHERE system_id = $1 FOR UPDATE", system_id)
    )
    problems = await _store_results(conn, system_id, signal)
    if signal.status is SignalStatus.FAILED:
        problems.append(
            f"the machine reported FAILED: {signal.error}" if signal.error else "the machine reported FAILED"
        )
    if status is not MachineStatus.COMMISSIONING:
        if signal.status in FINAL_STATUSES:
            refusal = (
                f"machine {system_id} is {status.value}, not commissioning: its {signal.status.value} signal "
                "changes nothing (any results it carried are stored)"
            )
            return SignalOutcome(system_id, status, refusal)
        return SignalOutcome(system_id, status)
    if problems:
        return await _finish(conn, system_id, MachineAction.COMMISSIONING_FAILED, "; ".join(problems))
    if signal.status is SignalStatus.OK:
        if await results_store.inventory_received_during_commissioning(conn, system_id):
            return await _finish(conn, system_id, MachineAction.COMMISSIONING_SUCCEEDED, None)
        return await _finish(conn, system_id, MachineAction.COMMISSIONING_FAILED, "no hardware inventory received")
    return SignalOutcome(system_id, status)


async def _repeated_final_signal(conn: DbConnection, signal: MetadataSignal) -> SignalOutcome | None:
    """The outcome to answer again when ``signal`` repeats the final signal that just ended commissioning."""
    if signal.status not in FINAL_STATUSES:
        return None
    ended = await machine_whose_run_this_token_ended(conn, signal.credentials, within_s=REPEATED_SIGNAL_GRACE_S)
    if ended is None:
        return None
    system_id, status = ended
    return SignalOutcome(system_id, status) if status is OUTCOME_OF[signal.status] else None


async def _store_results(conn: DbConnection, system_id: str, signal: MetadataSignal) -> list[str]:
    """Store each result (the inventory too, if valid); returns what went wrong, in the order it came."""
    problems: list[str] = []
    for result in signal.results:
        await results_store.store_result(conn, system_id, result)
        if result.exit_status != 0:
            problems.append(f"script {result.name} exited with status {result.exit_status}")
        elif result.name == INVENTORY_RESULT_NAME:
            try:
                inventory = results_store.parse_inventory(result)
            except results_store.InvalidInventory as error:
                problems.append(str(error))
            else:
                await results_store.store_inventory(conn, system_id, inventory)
    return problems


async def _finish(conn: DbConnection, system_id: str, action: MachineAction, reason: str | None) -> SignalOutcome:
    """End commissioning: the transition (and its event); the token goes and the machine boots local again."""
    if reason is not None and len(reason) > MAX_REASON:
        reason = reason[: MAX_REASON - 1] + "…"
    event = await apply_action(conn, system_id, action, reason=reason)
    await leave_commissioning(conn, system_id)
    return SignalOutcome(system_id, event.to_status)
