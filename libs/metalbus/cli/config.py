"""The CLI's profiles: where `metalbus login` keeps API addresses and keys, and which ones a command uses.

Profiles live in ``${XDG_CONFIG_HOME:-~/.config}/metalbus/cli.toml`` (mode 0600, directory 0700)::

    default = "lab"

    [profiles.lab]
    url = "http://127.0.0.1:5240"
    api_key = "mb_…"

A command uses ``--profile`` (or ``METALBUS_PROFILE``), else the default profile; ``METALBUS_URL`` and
``METALBUS_API_KEY`` override what the profile says, and are enough on their own.
"""

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
URL_ENV = "METALBUS_URL"
API_KEY_ENV = "METALBUS_API_KEY"
PROFILE_ENV = "METALBUS_PROFILE"
API_PREFIX = "/api/v1"


class ConfigError(Exception):
    """The profiles file or the asked-for profile cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Profile:
    name: str
    url: str
    api_key: str


@dataclass(frozen=True)
class Target:
    """Where a command sends its requests and with which key."""

    url: str
    api_key: str
    profile: str | None


@dataclass(frozen=True)
class Profiles:
    default: str | None
    entries: dict[str, Profile]


def config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "metalbus" / "cli.toml"


def normalise_url(url: str) -> str:
    """``http://host:5240/``, ``http://host:5240/api/v1`` → ``http://host:5240`` (the API's root)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"not an http(s) URL: {url!r}")
    path = parts.path.rstrip("/")
    path = path.removesuffix(API_PREFIX)
    return f"{parts.scheme}://{parts.netloc}{path}"


def check_profile_name(name: str) -> str:
    if not PROFILE_NAME.match(name):
        raise ConfigError(f"invalid profile name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


def load_profiles(path: Path) -> Profiles:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return Profiles(default=None, entries={})
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    entries: dict[str, Profile] = {}
    for name, table in dict(data.get("profiles", {})).items():
        if not isinstance(table, dict) or not isinstance(table.get("url"), str) or "api_key" not in table:
            raise ConfigError(f"{path}: profile {name!r} needs url and api_key")
        entries[name] = Profile(name=name, url=table["url"], api_key=str(table["api_key"]))
    default = data.get("default")
    return Profiles(default=default if isinstance(default, str) else None, entries=entries)


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def render_profiles(profiles: Profiles) -> str:
    lines = ["# metalbus CLI profiles, written by `metalbus login`; holds API keys: keep it private.", ""]
    if profiles.default is not None:
        lines += [f"default = {_toml_string(profiles.default)}", ""]
    for profile in sorted(profiles.entries.values(), key=lambda p: p.name):
        lines += [
            f"[profiles.{_toml_string(profile.name)}]",
            f"url = {_toml_string(profile.url)}",
            f"api_key = {_toml_string(profile.api_key)}",
            "",
        ]
    return "\n".join(lines)


def save_profiles(path: Path, profiles: Profiles) -> None:
    """Write the file atomically, readable by its owner only (0600; its directory 0700 when made here)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(render_profiles(profiles))
        os.chmod(temporary, 0o600)  # whatever the umask or an older file said
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def add_profile(path: Path, profile: Profile) -> None:
    """Store (or replace) a profile; the profile logged into last becomes the default."""
    current = load_profiles(path)
    save_profiles(path, Profiles(default=profile.name, entries=current.entries | {profile.name: profile}))


def remove_profile(path: Path, name: str) -> None:
    current = load_profiles(path)
    if name not in current.entries:
        raise ConfigError(f"no profile {name!r} in {path}")
    remaining = {key: value for key, value in current.entries.items() if key != name}
    default = current.default if current.default != name else (min(remaining) if remaining else None)
    save_profiles(path, Profiles(default=default, entries=remaining))


def resolve_target(environ: Mapping[str, str], profile_name: str | None) -> Target:
    """The URL and key a command uses: the named (or default) profile, overridden by the environment."""
    path = config_path(environ)
    profiles = load_profiles(path)
    name = profile_name or environ.get(PROFILE_ENV) or None
    profile: Profile | None = None
    if name is not None:
        profile = profiles.entries.get(name)
        if profile is None:
            raise ConfigError(f"no profile {name!r}: run `metalbus login {name} <url> <api-key>`")
    elif profiles.default is not None:
        profile = profiles.entries.get(profiles.default)
    url = environ.get(URL_ENV) or (profile.url if profile else None)
    api_key = environ.get(API_KEY_ENV) or (profile.api_key if profile else None)
    if not url or not api_key:
        raise ConfigError(
            "not logged in: run `metalbus login <profile> <url> <api-key>` or set METALBUS_URL and METALBUS_API_KEY"
        )
    return Target(url=normalise_url(url), api_key=api_key, profile=profile.name if profile else None)
