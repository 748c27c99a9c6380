"""`metalbus nats-config`: write a deployment's NATS users, permissions and per-role credential files."""

import re
from pathlib import Path
from typing import Annotated

import typer

from metalbus.cli.failures import fail
from metalbus.contracts.racks import RACK_ID_PATTERN
from metalbus.nats_auth import Roles
from metalbus.nats_credentials import auth_config_file, role_file, write_nats_credentials

DEFAULT_RACKS = ["rack-1"]


def nats_config(
    out: Annotated[Path, typer.Option("--out", help="Directory for nats-auth.conf and the role files.")],
    region_replicas: Annotated[
        int, typer.Option("--region-replicas", min=1, max=64, help="Region replicas: users region-1 … region-N.")
    ] = 2,
    racks: Annotated[
        list[str] | None, typer.Option("--rack", help="A rack id (repeat for each rack; default rack-1).")
    ] = None,
    integrator: Annotated[
        bool, typer.Option("--integrator/--no-integrator", help="Add the read-only events user.")
    ] = True,
    rotate: Annotated[bool, typer.Option("--rotate", help="New passwords for every user.")] = False,
) -> None:
    """Write nats-auth.conf (include it in, or pass it with -c to, nats-server) and one 0600 TOML per role
    (region-<n>.toml, api.toml, rack-<id>.toml, admin.toml, integrator.toml) to use as METALBUS_CONFIG.
    Passwords already in the directory are kept unless --rotate."""
    rack_ids = racks or DEFAULT_RACKS
    invalid = [rack_id for rack_id in rack_ids if not re.match(RACK_ID_PATTERN, rack_id)]
    if invalid:
        fail(f"invalid rack id {invalid[0]!r}: lower-case letters, digits and '-', at most 63")
    if len(set(rack_ids)) != len(rack_ids):
        fail("a rack id is given twice")
    roles = Roles(
        region_replicas=tuple(f"region-{n}" for n in range(1, region_replicas + 1)),
        rack_ids=tuple(rack_ids),
        integrator=integrator,
    )
    try:
        write_nats_credentials(out, roles, rotate=rotate)
    except OSError as error:
        fail(f"cannot write NATS credentials to {out}: {error}")
    typer.echo(str(auth_config_file(out)))
    for user in roles.user_names():
        typer.echo(str(role_file(out, user)))
