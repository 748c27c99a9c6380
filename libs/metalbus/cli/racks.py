"""`metalbus racks list`: every rack, each service's health, the networks it reaches and subnets it serves."""

import typer

from metalbus.cli.output import present, racks_table
from metalbus.cli.session import JsonOption, ProfileOption, api_session

app = typer.Typer(help="Rack controllers.", no_args_is_help=True)


@app.command("list")
def list_racks(ctx: typer.Context, profile: ProfileOption = None, as_json: JsonOption = False) -> None:
    """Every rack service the region has heard from, with its health."""
    with api_session(ctx, profile) as api:
        racks = api.list_racks()
    present(racks, as_json, racks_table)
