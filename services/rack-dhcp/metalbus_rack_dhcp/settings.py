"""Settings of rack-dhcp: METALBUS_RACK_DHCP_* or the [rack-dhcp] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.contracts.boot import RACK_HTTP_PORT
from metalbus.rack_presence import RackServiceSettings


class RackDhcpSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_DHCP_", extra="ignore")
    SECTION: ClassVar[str] = "rack-dhcp"

    port: int = Field(default=67, ge=1, le=65535)
    serve_interfaces: list[str] = Field(
        default_factory=list,
        description="Names of the interfaces to answer DHCP on (JSON list in the environment); none: presence only.",
    )
    max_in_flight: int = Field(
        default=1024,
        ge=1,
        le=65536,
        description="Requests answered at once per interface; more are dropped (counted as overloaded).",
    )
    request_max_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="A request that waited longer since it reached the host is dropped as stale; 0: no limit.",
    )
    http_port: int = Field(
        default=RACK_HTTP_PORT, ge=1, le=65535, description="The rack's HTTP boot port, named in boot URLs."
    )
    lease_request_timeout_s: float = Field(default=2.0, gt=0, le=30)
    subnet_cache_s: float = Field(default=5.0, ge=0, le=300)
    lease_batch_max: int = Field(
        default=256,
        ge=0,
        le=1024,
        description="Most offers or commits sent to the region in one batch request; 0: one request each.",
    )
    lease_batches_in_flight: int = Field(
        default=2, ge=1, le=64, description="Batches of one kind on their way to the region at once."
    )
    snapshot_refresh_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How often the lease cache reloads the rack's snapshot (and reconciles local renewals).",
    )
