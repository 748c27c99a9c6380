"""Settings shared by every service: how each reads ``METALBUS_<SERVICE>_*`` and an optional TOML file.

Precedence, highest first: constructor arguments, environment variables, the TOML file named by
``METALBUS_CONFIG`` (its ``[<service>]`` table, e.g. ``[region]`` or ``[rack-dhcp]``), defaults.
"""

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from metalbus.bus import ConnectOptions
from metalbus.nats_auth import inbox_prefix_of

CONFIG_FILE_ENV = "METALBUS_CONFIG"
S = TypeVar("S", bound=BaseSettings)


class TomlSectionSource(PydanticBaseSettingsSource):
    """Reads one ``[section]`` of the TOML file named by ``METALBUS_CONFIG``, if that variable is set."""

    def __init__(self, settings_cls: type[BaseSettings], section: str) -> None:
        super().__init__(settings_cls)
        self._values: dict[str, Any] = {}
        path = os.environ.get(CONFIG_FILE_ENV)
        if path:
            with Path(path).open("rb") as handle:
                self._values = dict(tomllib.load(handle).get(section, {}))

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {key: value for key, value in self._values.items() if key in self.settings_cls.model_fields}


class ServiceSettings(BaseSettings):
    """Base of every service's settings: NATS address and credentials, logging."""

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)
    SECTION: ClassVar[str] = "service"

    nats_url: str = Field(default="nats://127.0.0.1:4222", description="Comma-separated NATS servers.")
    nats_user: str | None = None
    nats_password: str | None = Field(default=None, json_schema_extra={"secret": True})
    log_level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")
    log_json: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlSectionSource(settings_cls, cls.SECTION))

    def connect_options(self, client_name: str) -> ConnectOptions:
        return ConnectOptions(
            servers=tuple(url.strip() for url in self.nats_url.split(",") if url.strip()),
            name=client_name,
            user=self.nats_user,
            password=self.nats_password,
            # Each NATS user may subscribe only to its own inboxes (metalbus.nats_auth).
            inbox_prefix=inbox_prefix_of(self.nats_user) if self.nats_user else None,
        )


def load_settings(cls: type[S]) -> S:
    """Build settings or exit with a one-line reason naming the offending variable."""
    try:
        return cls()
    except ValidationError as error:
        prefix = cls.model_config.get("env_prefix", "")
        problems = "; ".join(
            f"{prefix}{'.'.join(str(p) for p in item['loc']).upper()}: {item['msg']}" for item in error.errors()
        )
        raise SystemExit(f"metalbus: invalid settings: {problems}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise SystemExit(f"metalbus: cannot read {os.environ.get(CONFIG_FILE_ENV)}: {error}") from None
