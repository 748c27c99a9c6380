"""Settings of rack-dhcp: METALBUS_RACK_DHCP_* or the [rack-dhcp] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.rack_presence import RackServiceSettings


class RackDhcpSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_DHCP_", extra="ignore")
    SECTION: ClassVar[str] = "rack-dhcp"

    listen_address: str = "0.0.0.0"
    port: int = Field(default=67, ge=1, le=65535)
