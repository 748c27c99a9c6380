"""`metalbus`: the embedded stack (up/down/status), the AsyncAPI document, database migrations."""

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from metalbus.asyncapi import build_asyncapi
from metalbus.cli import (
    admin,
    demo,
    doctor,
    events,
    fleet,
    lab,
    leases,
    machines,
    nats_config,
    profiles,
    racks,
    subnets,
)
from metalbus.db.migrate import MigrationError, migrate_dsn
from metalbus.logging import configure_logging
from metalbus.stack.config import StackLayout, StackSettings, load_record
from metalbus.stack.launcher import StackError, bring_down, bring_up, cluster_for, inspect
from metalbus.stack.metrics import stack_metrics, summary_json

app = typer.Typer(help="metalbus: bare-metal provisioning over a NATS bus.", no_args_is_help=True)
db_app = typer.Typer(help="Database tools.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command("login")(profiles.login)
app.command("logout")(profiles.logout)
app.add_typer(machines.app, name="machines")
app.add_typer(subnets.app, name="subnets")
app.add_typer(racks.app, name="racks")
app.add_typer(leases.app, name="leases")
app.command("events")(events.show_events)
app.add_typer(admin.app, name="admin")
app.add_typer(lab.app, name="lab")
app.command("demo")(demo.demo)
app.command("fleet")(fleet.fleet)
app.command("nats-config")(nats_config.nats_config)
app.command("doctor")(doctor.doctor)

StateDir = Annotated[Path | None, typer.Option("--state-dir", help="Where the stack keeps all its state.")]


def fail(message: str) -> None:
    typer.echo(f"metalbus: {message}", err=True)
    raise typer.Exit(1)


def stack_settings(**overrides: Any) -> StackSettings:
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return StackSettings(**given)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        fail(f"invalid stack settings: {problems}")
        raise


def state_dir_of(state_dir: Path | None) -> Path:
    return state_dir if state_dir is not None else stack_settings().state_dir


@app.command()
def up(
    state_dir: StateDir = None,
    nats_port: Annotated[int | None, typer.Option(help="NATS client port.")] = None,
    postgres_port: Annotated[int | None, typer.Option(help="PostgreSQL port.")] = None,
    api_port: Annotated[int | None, typer.Option(help="HTTP API port.")] = None,
    region_replicas: Annotated[int | None, typer.Option(help="Region replicas in the queue group.")] = None,
) -> None:
    """Start NATS, PostgreSQL, the region replicas, the api and one rack; return once all are healthy."""
    settings = stack_settings(
        state_dir=state_dir,
        nats_port=nats_port,
        postgres_port=postgres_port,
        api_port=api_port,
        region_replicas=region_replicas,
    )

    def interrupted(signum: int, _: object) -> None:
        raise KeyboardInterrupt  # SIGTERM like Ctrl-C: `up` stops what it started, then exits

    signal.signal(signal.SIGTERM, interrupted)
    try:
        seconds = asyncio.run(bring_up(settings))
    except StackError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; stopped everything this `up` had started")
    typer.echo(f"metalbus: stack up in {seconds:.1f}s; state in {settings.state_dir.resolve()}")
    typer.echo(f"metalbus: API http://{settings.host}:{settings.api_port}/api/v1/health")


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop every component of the stack (the data stays for the next `up`)."""
    try:
        stopped = bring_down(state_dir_of(state_dir))
    except StackError as error:
        fail(str(error))
        return
    typer.echo(f"metalbus: stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every component, its pid, memory, health and a summary of its metrics; exits 1 unless all are healthy."""
    try:
        report = asyncio.run(inspect(state_dir_of(state_dir)))
    except StackError as error:
        fail(str(error))
        return
    summaries = asyncio.run(stack_metrics(state_dir_of(state_dir), [s.name for s in report if s.pid]))
    if as_json:
        rows = [
            {
                "name": s.name,
                "pid": s.pid,
                "rss_kib": s.rss_kib,
                "healthy": s.probe.healthy,
                "detail": s.probe.detail,
                "log": str(s.log),
                **summary_json(summaries, s.name),
            }
            for s in report
        ]
        typer.echo(json.dumps(rows, indent=2))
    else:
        typer.echo(f"{'component':<12} {'pid':>7} {'rss MiB':>8}  {'health':<9} detail")
        for s in report:
            rss = f"{s.rss_kib / 1024:.0f}" if s.rss_kib else "-"
            health = "healthy" if s.probe.healthy else "UNHEALTHY"
            typer.echo(f"{s.name:<12} {s.pid or '-':>7} {rss:>8}  {health:<9} {s.probe.detail}")
            if s.name in summaries:
                typer.echo(f"{'':<12} {'':>7} {'':>8}  {'':<9} {summaries[s.name].describe()}")
        total = sum(s.rss_kib or 0 for s in report) / 1024
        typer.echo(f"{'total':<12} {'':>7} {total:>8.0f}")
    if not all(s.probe.healthy for s in report):
        raise typer.Exit(1)


@app.command()
def asyncapi() -> None:
    """Print the AsyncAPI 3.0 document (JSON) of every NATS subject."""
    json.dump(build_asyncapi(), sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


@db_app.command("migrate")
def db_migrate(
    dsn: Annotated[str | None, typer.Option(help="PostgreSQL DSN; default: the embedded stack's.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Apply pending migrations (safe to run while region replicas run or start)."""
    if dsn is None:
        layout = StackLayout(state_dir_of(state_dir))
        settings = load_record(layout)
        if settings is None:
            fail(f"no --dsn given and no stack recorded in {layout.root}")
            return
        dsn = cluster_for(settings, layout).dsn()
    try:
        report = asyncio.run(migrate_dsn(dsn))
    except (MigrationError, OSError) as error:
        fail(f"migration failed: {error}")
        return
    applied = ", ".join(map(str, report.applied)) or "none"
    typer.echo(f"metalbus: migrations at level {report.level} (applied now: {applied})")


def main() -> None:
    configure_logging("warning")
    app()


if __name__ == "__main__":
    main()
