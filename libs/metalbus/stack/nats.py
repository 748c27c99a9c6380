"""The stack's NATS: the nats-server command line with JetStream (shared by `metalbus up`, the tests and the
benchmarks), and the users `metalbus up` gives it and its components."""

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from metalbus.bus import ConnectOptions
from metalbus.nats_auth import ADMIN_USER, Roles
from metalbus.nats_credentials import Credential, auth_config_file, read_credential, write_nats_credentials
from metalbus.stack.binaries import nats_server_binary

DEFAULT_CONNECT_DEADLINE_S = ConnectOptions.initial_connect_deadline_s


def nats_server_argv(
    *,
    host: str,
    port: int,
    store_dir: Path,
    monitor_port: int | None = None,
    binary: Path | None = None,
    config: Path | None = None,
) -> tuple[str, ...]:
    """``config``: a nats-server config file (e.g. the users and permissions of metalbus.nats_credentials);
    the options given here on the command line take precedence over the same ones in it."""
    argv = [str(nats_server_binary(binary))]
    if config is not None:
        argv += ["--config", str(config)]
    argv += [
        "--addr", host,
        "--port", str(port),
        "--jetstream",
        "--store_dir", str(store_dir),
        "--server_name", "metalbus",
    ]  # fmt: skip
    if monitor_port is not None:
        argv += ["--http_port", str(monitor_port)]
    return tuple(argv)


def stack_auth_dir(nats_store: Path) -> Path:
    """Where `metalbus up` keeps its NATS credentials: ``<state>/nats/auth`` (0700, files 0600)."""
    return nats_store / "auth"


def stack_auth_config(nats_store: Path) -> Path:
    return auth_config_file(stack_auth_dir(nats_store))


def stack_nats_credentials(
    nats_store: Path, region_replicas: Sequence[str], rack_ids: Sequence[str]
) -> dict[str, Credential]:
    """The embedded stack's users (made once, kept across `up`s) and its nats-server config.

    Clients that bring no credentials act as ``admin`` (``no_auth_user``): `metalbus admin create-key` and
    `metalbus demo` connect that way, and the embedded stack listens on the operator's own host."""
    roles = Roles(region_replicas=tuple(region_replicas), rack_ids=tuple(rack_ids), integrator=True)
    return write_nats_credentials(stack_auth_dir(nats_store), roles, no_auth_user=ADMIN_USER)


def nats_login_env(prefix: str, credential: Credential) -> dict[str, str]:
    """``METALBUS_<SERVICE>_NATS_USER`` / ``_NATS_PASSWORD`` for a component running as ``credential``."""
    return {prefix + "NATS_USER": credential.user, prefix + "NATS_PASSWORD": credential.password}


def stack_client_options(
    nats_store: Path, url: str, name: str, *, initial_connect_deadline_s: float = DEFAULT_CONNECT_DEADLINE_S
) -> ConnectOptions:
    """How `metalbus up` and `status` reach the stack's NATS themselves: as its ``admin`` user, when the
    stack has one (a stack started before NATS users existed has none)."""
    options = ConnectOptions(servers=(url,), name=name, initial_connect_deadline_s=initial_connect_deadline_s)
    admin = read_credential(stack_auth_dir(nats_store), ADMIN_USER)
    if admin is None:
        return options
    return replace(options, user=admin.user, password=admin.password, inbox_prefix=admin.inbox_prefix)
