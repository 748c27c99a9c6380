"""Settings of rack-power: METALBUS_RACK_POWER_* or the [rack-power] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.rack_presence import RackServiceSettings


class RackPowerSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_POWER_", extra="ignore")
    SECTION: ClassVar[str] = "rack-power"

    listen_address: str = "0.0.0.0"
    poll_interval_s: float = Field(default=60.0, gt=0)
