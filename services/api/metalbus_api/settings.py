"""API settings: METALBUS_API_* or the [api] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.settings import ServiceSettings


class ApiSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_API_", extra="ignore")
    SECTION: ClassVar[str] = "api"

    host: str = "127.0.0.1"
    port: int = Field(default=5240, ge=1, le=65535)
    region_timeout_s: float = Field(default=3.0, gt=0)
    roll_call_window_s: float = Field(default=0.3, gt=0, le=5)
