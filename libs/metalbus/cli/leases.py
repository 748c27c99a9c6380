"""`metalbus leases list`: DHCP leases, by subnet or MAC."""

from typing import Annotated

import typer

from metalbus.cli.output import leases_table, present
from metalbus.cli.session import JsonOption, ProfileOption, api_session

app = typer.Typer(help="DHCP leases.", no_args_is_help=True)


@app.command("list")
def list_leases(
    ctx: typer.Context,
    subnet: Annotated[int | None, typer.Option("--subnet", help="Only this subnet id.")] = None,
    mac: Annotated[str | None, typer.Option(help="Only this MAC address.")] = None,
    include_inactive: Annotated[
        bool, typer.Option("--all", help="Also released, expired and past leases (default: active only).")
    ] = False,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Leases; by default only unexpired offered, bound and declined ones."""
    with api_session(ctx, profile) as api:
        leases = api.list_leases(subnet_id=subnet, mac=mac, active_only=not include_inactive)
    present(leases, as_json, leases_table)
