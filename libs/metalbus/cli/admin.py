"""`metalbus admin create-key`: make an API key by asking the region over NATS (run it on the region host)."""

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Annotated, ClassVar

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from metalbus.bus import Bus, ConnectOptions
from metalbus.cli.failures import fail
from metalbus.cli.output import emit_json
from metalbus.contracts.apikeys import ApiKeyCreate, ApiKeyCreated
from metalbus.contracts.errors import MetalbusError
from metalbus.settings import ServiceSettings
from metalbus.stack.config import StackLayout, StackSettings, load_record
from metalbus.stack.nats import stack_client_options
from metalbus.subjects import API_KEY_CREATE

app = typer.Typer(help="Region-host administration: talks to NATS directly, not to the API.", no_args_is_help=True)

NATS_CONNECT_DEADLINE_S = 5.0
REQUEST_TIMEOUT_S = 10.0


class AdminSettings(ServiceSettings):
    """The ``[admin]`` table of METALBUS_CONFIG (``metalbus nats-config`` writes it as admin.toml) or
    METALBUS_ADMIN_* variables: the NATS user `metalbus admin` logs in as when given --nats-url."""

    model_config = SettingsConfigDict(env_prefix="METALBUS_ADMIN_", extra="ignore")
    SECTION: ClassVar[str] = "admin"


def stack_connect_options(state_dir: Path | None) -> ConnectOptions:
    """How to reach the embedded stack in ``state_dir`` (default: ``metalbus up``'s): its recorded NATS
    address, as the stack's ``admin`` user."""
    try:
        directory = state_dir if state_dir is not None else StackSettings().state_dir
    except ValidationError as error:
        fail(f"invalid METALBUS_STACK_* settings: {error.errors()[0]['msg']}")
    layout = StackLayout(directory)
    recorded = load_record(layout)
    if recorded is None:
        fail(f"no stack recorded in {layout.root}: give --nats-url, or --state-dir of a `metalbus up`")
    url = f"nats://{recorded.host}:{recorded.nats_port}"
    return stack_client_options(
        layout.nats_store, url, "metalbus-admin", initial_connect_deadline_s=NATS_CONNECT_DEADLINE_S
    )


def url_connect_options(nats_url: str) -> ConnectOptions:
    """``nats_url`` with the admin credentials of METALBUS_CONFIG's ``[admin]`` table, if any."""
    try:
        settings = AdminSettings(nats_url=nats_url)
    except ValidationError as error:
        fail(f"invalid admin settings: {error.errors()[0]['msg']}")
    return replace(settings.connect_options("metalbus-admin"), initial_connect_deadline_s=NATS_CONNECT_DEADLINE_S)


async def request_key(options: ConnectOptions, name: str) -> ApiKeyCreated:
    bus = await Bus.connect(options)
    try:
        return await bus.request(API_KEY_CREATE, ApiKeyCreate(name=name), timeout=REQUEST_TIMEOUT_S)
    finally:
        await bus.close()


@app.command("create-key")
def create_key(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for, e.g. ci-pipeline.")],
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="The embedded stack whose NATS to use (default: .metalbus).")
    ] = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="NATS to use instead of a stack's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the region's reply as JSON.")] = False,
) -> None:
    """Create an API key; the whole key is printed this once and cannot be shown again."""
    if state_dir is not None and nats_url is not None:
        fail("give --state-dir or --nats-url, not both")
    try:
        request = ApiKeyCreate(name=name)
    except ValidationError as error:
        fail(f"invalid key name {name!r}: {error.errors()[0]['msg']}")
    options = url_connect_options(nats_url) if nats_url is not None else stack_connect_options(state_dir)
    try:
        created = asyncio.run(request_key(options, request.name))
    except MetalbusError as error:
        fail(f"{error.code.value}: {error.message}" + (", retry" if error.retryable else ""))
    if as_json:
        emit_json(created.model_dump(mode="json"))
        return
    typer.echo(f"metalbus: API key {created.name!r} created (id {created.key_id}); it is shown only now:", err=True)
    typer.echo(created.key)
