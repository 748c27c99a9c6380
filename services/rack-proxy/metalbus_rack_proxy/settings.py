"""Settings of rack-proxy: METALBUS_RACK_PROXY_* or the [rack-proxy] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.rack_presence import RackServiceSettings


class RackProxySettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_PROXY_", extra="ignore")
    SECTION: ClassVar[str] = "rack-proxy"

    listen_address: str = "0.0.0.0"
    http_port: int = Field(default=5248, ge=1, le=65535)
    apt_proxy_port: int = Field(default=8000, ge=1, le=65535)
    dns_port: int = Field(default=53, ge=1, le=65535)
    syslog_port: int = Field(default=5247, ge=1, le=65535)
