"""`metalbus login <profile> <url> <api-key>` and `metalbus logout <profile>`: the CLI's saved credentials."""

import re
from typing import Annotated

import typer

from metalbus.cli.client import MetalbusApi
from metalbus.cli.config import Profile, add_profile, check_profile_name, config_path, normalise_url, remove_profile
from metalbus.cli.failures import reported_failures
from metalbus.cli.session import environment_of
from metalbus.contracts.apikeys import API_KEY_PATTERN


def login(
    ctx: typer.Context,
    profile: Annotated[str, typer.Argument(help="A name for this API and key, e.g. lab.")],
    url: Annotated[str, typer.Argument(help="The API, e.g. http://region-host:5240.")],
    api_key: Annotated[str, typer.Argument(help="A key from `metalbus admin create-key` (mb_<id>_<secret>).")],
    check: Annotated[bool, typer.Option(help="Try the key against the API before saving it.")] = True,
) -> None:
    """Save a profile (it becomes the default); like `maas login`, the key is checked first."""
    environment = environment_of(ctx)
    with reported_failures():
        name, root = check_profile_name(profile), normalise_url(url)
        if not re.match(API_KEY_PATTERN, api_key):
            raise typer.BadParameter("not a metalbus API key (mb_<key id>_<secret>)", param_hint="API_KEY")
        if check:
            with MetalbusApi(root, api_key, transport=environment.transport, timeout_s=10) as api:
                api.list_machines(limit=1)
        path = config_path(environment.environ)
        add_profile(path, Profile(name=name, url=root, api_key=api_key))
    typer.echo(f"metalbus: logged in to {root} as profile {name!r} (saved in {path})")


def logout(
    ctx: typer.Context,
    profile: Annotated[str, typer.Argument(help="The profile to forget.")],
) -> None:
    """Forget a saved profile and its key."""
    path = config_path(environment_of(ctx).environ)
    with reported_failures():
        remove_profile(path, profile)
    typer.echo(f"metalbus: logged out of profile {profile!r}")
