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
    region_timeout_s: float = Field(default=3.0, gt=0, description="How long the region may take to answer.")
    power_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="For commands that make the region talk to a BMC through a rack."
    )
    roll_call_window_s: float = Field(default=0.3, gt=0, le=5)
    auth_cache_ttl_s: float = Field(
        default=30.0, ge=0, le=3600, description="How long a key the region accepted is trusted without asking."
    )
    auth_cache_max_keys: int = Field(default=10_000, ge=1)
    retry_after_s: int = Field(default=2, ge=1, le=3600, description="Retry-After on 503 answers.")
    commission_wait_cap_s: float = Field(
        default=3600.0, gt=0, le=24 * 3600, description="Upper bound of a commission request's wait_timeout_s."
    )
    commission_poll_s: float = Field(
        default=5.0, gt=0, le=300, description="While waiting on a commission: re-read the machine this often."
    )
    events_page_max: int = Field(default=1000, ge=1, le=10_000, description="Most events one history page holds.")
    event_stream_keepalive_s: float = Field(default=15.0, gt=0, le=300)
    event_stream_max_s: float = Field(
        default=3600.0, gt=0, description="An event stream ends after this long; clients resume with Last-Event-ID."
    )
    event_streams_max: int = Field(default=64, ge=1, description="Open event streams at once; more get 503.")
    jetstream_timeout_s: float = Field(default=3.0, gt=0, le=60)
