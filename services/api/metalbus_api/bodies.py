"""HTTP request bodies that are not a bus contract as is: the id travels in the path, or the route adds options.

Where a body mirrors a contract (``MachinePatch`` ↔ ``MachineUpdate``, ``SubnetPatch`` ↔ ``SubnetUpdate``) its
fields are the contract's, field for field (a unit test compares their JSON schemas). Unknown fields are ignored,
as on the bus.
"""

from ipaddress import IPv4Address
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from metalbus.contracts.common import Architecture, IdempotencyKey, MacAddress
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerAction
from metalbus.contracts.scripts import SCRIPT_NAME_PATTERN

MAX_COMMISSIONING_TIMEOUT_S = 24 * 3600


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class MachinePatch(Body):
    """``MachineUpdate`` without ``system_id``: fields left out (or null) stay as they are."""

    hostname: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    architecture: Architecture | None = None
    boot_mac: MacAddress | None = None
    power_type: PowerType | None = None
    power_parameters: dict[str, Any] | None = None
    power_secrets: dict[str, str] | None = Field(default=None, repr=False)
    idempotency_key: IdempotencyKey | None = None


class SubnetPatch(Body):
    """``SubnetUpdate`` without ``subnet_id``: fields left out (or null) stay as they are."""

    dynamic_start: IPv4Address | None = None
    dynamic_end: IPv4Address | None = None
    gateway: IPv4Address | None = None
    dns_servers: list[IPv4Address] | None = None
    lease_time_s: int | None = Field(default=None, ge=30, le=7 * 24 * 3600)
    managed: bool | None = None


class CommissionBody(Body):
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_COMMISSIONING_TIMEOUT_S,
        description="Fail commissioning if no result arrives by then (region default when left out).",
    )
    scripts: list[Annotated[str, Field(pattern=SCRIPT_NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=50,
        description="Commissioning scripts (PUT /scripts/{name}) to run after the inventory, in this order.",
    )
    wait: bool = Field(default=False, description="Answer only when the machine leaves commissioning.")
    wait_timeout_s: float = Field(
        default=1800,
        gt=0,
        le=MAX_COMMISSIONING_TIMEOUT_S,
        description="With wait: answer with the machine as it is after this long at most (capped by the api).",
    )
    reason: str | None = Field(default=None, max_length=1000)


class ActionBody(Body):
    reason: str | None = Field(default=None, max_length=1000)


class PowerBody(Body):
    action: PowerAction
