"""The fleet command's NATS connection: ``METALBUS_FLEET_*`` variables and the ``[fleet]`` table of METALBUS_CONFIG."""

from typing import ClassVar

from pydantic_settings import SettingsConfigDict

from metalbus.settings import ServiceSettings


class FleetSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_FLEET_", extra="ignore", validate_default=True)
    SECTION: ClassVar[str] = "fleet"
