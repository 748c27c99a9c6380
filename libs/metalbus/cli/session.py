"""What every API command shares: its options (``--profile``, ``--json``) and how it gets a connected client.

The outside world a command sees (environment variables, an HTTP transport) is a :class:`CliEnvironment` carried
in the click context's ``obj``; tests pass their own (``CliRunner.invoke(app, args, obj=CliEnvironment(...))``),
the real CLI uses the process environment and the network.
"""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import typer

from metalbus.cli.client import MetalbusApi
from metalbus.cli.config import resolve_target
from metalbus.cli.failures import reported_failures

ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", "-p", help="Profile from `metalbus login` (default: the last one logged into)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table.")]


@dataclass(frozen=True)
class CliEnvironment:
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    transport: httpx.BaseTransport | None = None


def environment_of(ctx: typer.Context) -> CliEnvironment:
    found = ctx.find_object(CliEnvironment)
    return found if found is not None else CliEnvironment()


@contextmanager
def api_session(ctx: typer.Context, profile: str | None) -> Iterator[MetalbusApi]:
    """A client for the chosen profile; failures inside the block end the command with one line, exit 1."""
    environment = environment_of(ctx)
    with reported_failures():
        target = resolve_target(environment.environ, profile)
        with MetalbusApi(target.url, target.api_key, transport=environment.transport) as api:
            yield api
