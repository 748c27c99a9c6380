"""Settings of rack-power: METALBUS_RACK_POWER_* or the [rack-power] table of the METALBUS_CONFIG file."""

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from metalbus.rack_presence import RackServiceSettings


class RackPowerSettings(RackServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METALBUS_RACK_POWER_", extra="ignore")
    SECTION: ClassVar[str] = "rack-power"

    listen_address: str = "0.0.0.0"
    poll_interval_s: float = Field(
        default=60.0, gt=0, description="How often the power state of every machine this rack reaches is read."
    )
    max_bmc_workers: int = Field(
        default=16, ge=1, le=512, description="IPMI calls in flight at once (pyghmi blocks: one thread each)."
    )
    # Keep (1 + retries) x timeout + backoffs below the region's power_request_timeout_s (10 s): past it the
    # region stops waiting for this rack.
    ipmi_timeout_s: float = Field(
        default=3.0, gt=0, le=300, description="Longest one IPMI attempt (login and operation) may take."
    )
    redfish_timeout_s: float = Field(default=4.0, gt=0, le=300, description="Longest one Redfish attempt may take.")
    retries: int = Field(
        default=1, ge=0, le=10, description="Further attempts after a transient BMC failure (unreachable, silent)."
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, le=60, description="Wait before the first retry; doubled for each later one."
    )
    idempotency_ttl_s: float = Field(
        default=600.0, gt=0, description="How long a command's idempotency key answers without acting again."
    )
    idempotency_capacity: int = Field(default=4096, ge=1, description="Most idempotency keys remembered at once.")
    poll_concurrency: int = Field(default=8, ge=1, le=512, description="BMCs queried at once by one poll round.")
