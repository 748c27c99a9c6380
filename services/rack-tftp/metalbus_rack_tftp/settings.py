"""Settings of rack-tftp: METALBUS_RACK_TFTP_* or the [rack-tftp] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.rack_presence import RackServiceSettings


class RackTftpSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_TFTP_", extra="ignore")
    SECTION: ClassVar[str] = "rack-tftp"

    listen_address: str = "0.0.0.0"
    port: int = Field(default=69, ge=1, le=65535)
    http_port: int = Field(default=5248, ge=1, le=65535)
