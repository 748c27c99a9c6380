"""`metalbus doctor`: the preflight of a rack host as a table (or JSON) with a fix per failure; exit 1 on failure."""

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from metalbus.cli.output import emit_json, show
from metalbus.doctor.preflight import run_preflight
from metalbus.doctor.rack_config import (
    RackConfigError,
    RackHostSettings,
    embedded_rack_host_settings,
    load_rack_host_settings,
)
from metalbus.doctor.report import Check, Status, checks_as_json, exit_code
from metalbus.settings import CONFIG_FILE_ENV
from metalbus.stack.config import StackLayout, StackSettings

STATUS_STYLES = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


def checks_table(checks: list[Check]) -> Table:
    failures = sum(check.status is Status.FAIL for check in checks)
    caption = f"{len(checks)} checks, {failures} failed" if failures else f"{len(checks)} checks, none failed"
    table = Table(caption=caption)
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        status = Text(check.status.value.upper(), style=STATUS_STYLES[check.status])
        table.add_row(check.name, status, check.detail, check.fix or "-")
    return table


def rack_settings(config: Path | None, embedded: bool, state_dir: Path | None) -> RackHostSettings:
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)  # read by every service's settings, as by the services
    if embedded:
        return embedded_rack_host_settings(StackLayout(state_dir or StackSettings().state_dir))
    return load_rack_host_settings()


def doctor(
    config: Annotated[
        Path | None, typer.Option("--config", help=f"TOML file of the rack services (as {CONFIG_FILE_ENV}).")
    ] = None,
    embedded: Annotated[
        bool, typer.Option("--embedded", help="Check the rack of the embedded stack (`metalbus up`).")
    ] = False,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="The embedded stack's state.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for NATS and for the region.", min=0.1)] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Preflight of a rack host: ports free or ours, DHCP interfaces, boot files, BMC routes, NATS and region."""
    try:
        rack = rack_settings(config, embedded, state_dir)
    except RackConfigError as error:
        typer.echo(f"metalbus: {error}", err=True)
        raise typer.Exit(2) from None
    checks = run_preflight(rack, timeout)
    if as_json:
        emit_json(checks_as_json(checks))
    else:
        show(checks_table(checks))
    raise typer.Exit(exit_code(checks))
