"""`metalbus machines …`: list, show, add, commission (optionally waiting), abort, broken/fixed, power, results,
inventory, delete."""

from enum import StrEnum
from typing import Annotated, Any

import typer

from metalbus.cli.commission_watch import CommissioningWatch, Outcome, WatchResult
from metalbus.cli.event_view import EventRecord, event_line
from metalbus.cli.failures import fail
from metalbus.cli.output import (
    emit_json,
    inventory_view,
    machine_details,
    machines_table,
    present,
    results_table,
    short_time,
)
from metalbus.cli.session import JsonOption, ProfileOption, api_session
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import MachineStatus, PowerType
from metalbus.contracts.power import PowerAction

app = typer.Typer(help="Machines: add, list, commission, power, results.", no_args_is_help=True)

SystemIdArgument = Annotated[str, typer.Argument(help="The machine's system id (six characters).")]
POWER_TYPES_WITH_PASSWORD = (PowerType.IPMI, PowerType.REDFISH)
REGION_DEFAULT_COMMISSIONING_TIMEOUT_S = 1800.0
WAIT_GRACE_S = 60.0


class CliMachineAction(StrEnum):
    ABORT = "abort"
    MARK_BROKEN = "mark-broken"
    MARK_FIXED = "mark-fixed"


@app.command("list")
def list_machines(
    ctx: typer.Context,
    status: Annotated[MachineStatus | None, typer.Option(help="Only machines in this status.")] = None,
    hostname: Annotated[str | None, typer.Option(help="Only the machine with this exact hostname.")] = None,
    arch: Annotated[Architecture | None, typer.Option("--arch", help="Only this architecture.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Machines per page.")] = 100,
    offset: Annotated[int, typer.Option(min=0, help="Machines to skip.")] = 0,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Machines, ordered by hostname, one page at a time."""
    with api_session(ctx, profile) as api:
        page = api.list_machines(
            status=status.value if status else None,
            hostname=hostname,
            architecture=arch.value if arch else None,
            offset=offset,
            limit=limit,
        )
    present(page, as_json, machines_table)


@app.command("show")
def show_machine(
    ctx: typer.Context, system_id: SystemIdArgument, profile: ProfileOption = None, as_json: JsonOption = False
) -> None:
    """One machine."""
    with api_session(ctx, profile) as api:
        machine = api.get_machine(system_id)
    present(machine, as_json, machine_details)


@app.command("add")
def add_machine(
    ctx: typer.Context,
    mac: Annotated[str, typer.Option("--mac", help="The MAC address the machine PXE-boots from.")],
    hostname: Annotated[str | None, typer.Option(help="Default: node-<system id>.")] = None,
    arch: Annotated[Architecture, typer.Option("--arch", help="Boot architecture.")] = Architecture.AMD64_BIOS,
    power_type: Annotated[PowerType, typer.Option(help="How the region powers it.")] = PowerType.MANUAL,
    power_address: Annotated[str | None, typer.Option(help="BMC address.")] = None,
    power_user: Annotated[str | None, typer.Option(help="BMC user.")] = None,
    power_password: Annotated[
        str | None, typer.Option(help="BMC password; asked for (hidden) when the power type needs one.")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Repeat safely: applied once per key.")] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a machine (status NEW). The BMC password is write-only: no reply or event ever shows it."""
    if power_type in POWER_TYPES_WITH_PASSWORD and power_password is None:
        power_password = typer.prompt(
            f"{power_type.value} password for {power_address or 'the BMC'}", hide_input=True, err=True
        )
    parameters = {key: value for key, value in (("address", power_address), ("username", power_user)) if value}
    body: dict[str, Any] = {
        "hostname": hostname,
        "architecture": arch.value,
        "boot_mac": mac,
        "power_type": power_type.value,
        "power_parameters": parameters,
        "power_secrets": {"password": power_password} if power_password else {},
    }
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    with api_session(ctx, profile) as api:
        machine = api.create_machine({key: value for key, value in body.items() if value is not None})
    present(machine, as_json, machine_details)


@app.command("commission")
def commission(
    ctx: typer.Context,
    system_id: SystemIdArgument,
    wait: Annotated[bool, typer.Option("--wait", help="Follow its progress until READY or FAILED.")] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0.001, help="Commissioning deadline in seconds, enforced by the region (default: its own)."),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001, help=f"With --wait: give up waiting after this long (default: deadline + {WAIT_GRACE_S:g} s)."
        ),
    ] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Commission a machine. With --wait: exit 0 when READY, 1 when FAILED_COMMISSIONING, 2 on the wait timeout."""
    if not wait:
        with api_session(ctx, profile) as api:
            machine = api.commission(system_id, timeout_s=timeout)
        present(machine, as_json, machine_details)
        return
    wait_s = (
        wait_timeout if wait_timeout is not None else (timeout or REGION_DEFAULT_COMMISSIONING_TIMEOUT_S) + WAIT_GRACE_S
    )
    with api_session(ctx, profile) as api:
        watch = CommissioningWatch(api, system_id, on_event=(lambda _: None) if as_json else print_progress)
        result = watch.run(
            commissioning_timeout_s=timeout,
            wait_s=wait_s,
            on_commissioned=(lambda _: None) if as_json else (lambda m: print_commissioned(m, wait_s)),
        )
    report_watch(result, system_id, wait_s, as_json=as_json)


def print_progress(record: EventRecord) -> None:
    typer.echo(event_line(record))


def print_commissioned(machine: dict[str, Any], wait_s: float) -> None:
    if machine.get("status") != "commissioning":
        typer.echo(f"{machine.get('system_id')}: {machine.get('status')}")
        return
    deadline = short_time(machine.get("commissioning_deadline"))
    typer.echo(f"{machine.get('system_id')}: commissioning (deadline {deadline}); waiting up to {wait_s:g} s")


def report_watch(result: WatchResult, system_id: str, wait_s: float, *, as_json: bool) -> None:
    if as_json and result.machine is not None:
        emit_json(result.machine)
    match result.outcome:
        case Outcome.READY:
            if not as_json:
                typer.echo(f"{system_id}: ready")
        case Outcome.FAILED:
            fail(f"{system_id} is {result.status}: {result.reason}", Outcome.FAILED)
        case Outcome.TIMED_OUT:
            fail(f"{system_id} still {result.status} after waiting {wait_s:g} s", Outcome.TIMED_OUT)


def _action(
    ctx: typer.Context, system_id: str, action: CliMachineAction, reason: str | None, profile: str | None, as_json: bool
) -> None:
    with api_session(ctx, profile) as api:
        machine = api.machine_action(system_id, action.value, reason=reason)
    present(machine, as_json, machine_details)


@app.command("abort")
def abort(
    ctx: typer.Context, system_id: SystemIdArgument, profile: ProfileOption = None, as_json: JsonOption = False
) -> None:
    """Stop commissioning: the machine returns to its previous status and is powered off."""
    _action(ctx, system_id, CliMachineAction.ABORT, None, profile, as_json)


@app.command("mark-broken")
def mark_broken(
    ctx: typer.Context,
    system_id: SystemIdArgument,
    reason: Annotated[str | None, typer.Option(help="Why (kept as the status reason).")] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take a machine out of service."""
    _action(ctx, system_id, CliMachineAction.MARK_BROKEN, reason, profile, as_json)


@app.command("mark-fixed")
def mark_fixed(
    ctx: typer.Context, system_id: SystemIdArgument, profile: ProfileOption = None, as_json: JsonOption = False
) -> None:
    """Return a broken machine to service."""
    _action(ctx, system_id, CliMachineAction.MARK_FIXED, None, profile, as_json)


@app.command("power")
def power(
    ctx: typer.Context,
    system_id: SystemIdArgument,
    action: Annotated[PowerAction, typer.Argument(help="on, off, cycle or query.")],
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Power a machine on/off/cycle, or ask its BMC, through a rack that reaches it."""
    with api_session(ctx, profile) as api:
        result = api.power(system_id, action.value)
    present(result, as_json, lambda data: f"{data.get('system_id', system_id)}: power {data.get('state')}")


@app.command("results")
def results(
    ctx: typer.Context,
    system_id: SystemIdArgument,
    output: Annotated[bool, typer.Option("--output", help="Also print each script's stdout and stderr.")] = False,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """A machine's commissioning script results."""
    with api_session(ctx, profile) as api:
        stored = api.results(system_id)
    present(stored, as_json, lambda data: results_table(data, with_output=output))


@app.command("inventory")
def inventory(
    ctx: typer.Context, system_id: SystemIdArgument, profile: ProfileOption = None, as_json: JsonOption = False
) -> None:
    """What commissioning learnt: CPU, memory, disks, NICs, LLDP neighbours."""
    with api_session(ctx, profile) as api:
        learnt = api.inventory(system_id)
    present(learnt, as_json, inventory_view)


@app.command("delete")
def delete(
    ctx: typer.Context, system_id: SystemIdArgument, profile: ProfileOption = None, as_json: JsonOption = False
) -> None:
    """Remove a machine (not while it is commissioning)."""
    with api_session(ctx, profile) as api:
        api.delete_machine(system_id)
    present({"system_id": system_id, "deleted": True}, as_json, lambda data: f"{data['system_id']}: deleted")
