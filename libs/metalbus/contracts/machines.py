"""Machines: their status lifecycle, operator actions, and the commissioning inventory."""

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import (
    Architecture,
    IdempotencyKey,
    JsonObject,
    MacAddress,
    SystemId,
    TextMap,
    without_nul_characters,
)
from metalbus.contracts.scripts import SCRIPT_NAME_PATTERN


class MachineStatus(StrEnum):
    NEW = "new"
    COMMISSIONING = "commissioning"
    READY = "ready"
    FAILED_COMMISSIONING = "failed_commissioning"
    BROKEN = "broken"
    # Deployment is a later scope; the statuses exist so the table has room for them.
    ALLOCATED = "allocated"
    DEPLOYING = "deploying"
    DEPLOYED = "deployed"
    RELEASING = "releasing"


class MachineAction(StrEnum):
    """What operators (and the region itself) do to a machine; the transition table says where each leads."""

    COMMISSION = "commission"
    ABORT = "abort"
    MARK_BROKEN = "mark_broken"
    MARK_FIXED = "mark_fixed"
    # Taken by the region, not operators:
    COMMISSIONING_SUCCEEDED = "commissioning_succeeded"
    COMMISSIONING_FAILED = "commissioning_failed"


class PowerType(StrEnum):
    IPMI = "ipmi"
    REDFISH = "redfish"
    MANUAL = "manual"


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class BootPurpose(StrEnum):
    COMMISSIONING = "commissioning"
    ENLISTMENT = "enlistment"
    LOCAL = "local"


_MACHINE_EXAMPLE: dict[str, Any] = {
    "schema_version": 1,
    "system_id": "x7kq2m",
    "hostname": "node-1",
    "status": "new",
    "status_reason": None,
    "architecture": "amd64/bios",
    "boot_mac": "52:54:00:12:34:56",
    "power_type": "ipmi",
    "power_parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
    "bmc_address": "10.0.0.21",
    "created_at": "2026-11-25T06:00:00Z",
    "status_changed_at": "2026-11-25T06:00:00Z",
    "commissioning_deadline": None,
}


class Machine(Message):
    """A machine as the region reports it. BMC secrets (passwords) are never part of it."""

    model_config = examples(_MACHINE_EXAMPLE)

    system_id: SystemId
    hostname: str
    status: MachineStatus
    status_reason: str | None = None
    architecture: Architecture
    boot_mac: MacAddress | None
    power_type: PowerType
    power_parameters: dict[str, Any] = Field(description="Non-secret BMC parameters (address, port, user).")
    bmc_address: str | None = None
    created_at: datetime
    status_changed_at: datetime
    commissioning_deadline: datetime | None = None
    power_state: PowerState = Field(
        default=PowerState.UNKNOWN, description="As the racks last observed it (polled, and after power commands)."
    )
    power_state_changed_at: datetime | None = None


class MachineCreate(Message):
    """Add a machine. ``power_secrets`` (e.g. ``{"password": …}``) are stored apart and never returned."""

    model_config = examples(
        {
            "schema_version": 1,
            "hostname": "node-1",
            "architecture": "amd64/bios",
            "boot_mac": "52:54:00:12:34:56",
            "power_type": "ipmi",
            "power_parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
            "power_secrets": {"password": "s3cret"},
            "idempotency_key": "create-node-1-0001",
        }
    )

    hostname: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    architecture: Architecture = Architecture.AMD64_BIOS
    boot_mac: MacAddress
    power_type: PowerType = PowerType.MANUAL
    power_parameters: JsonObject = Field(default_factory=dict)
    power_secrets: TextMap = Field(default_factory=dict, repr=False)
    idempotency_key: IdempotencyKey | None = None


class MachineQuery(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m"})

    system_id: SystemId


class MachineListQuery(Message):
    """Filters combine with AND; results are ordered by hostname, then system id, and paged."""

    model_config = examples(
        {"schema_version": 1, "status": "ready", "hostname": None, "architecture": None, "offset": 0, "limit": 100}
    )

    status: MachineStatus | None = None
    hostname: Annotated[str, AfterValidator(without_nul_characters)] | None = Field(
        default=None, max_length=255, description="Exact hostname."
    )
    architecture: Architecture | None = None
    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=100, ge=1, le=1000)


class MachineList(Message):
    model_config = examples({"schema_version": 1, "machines": [_MACHINE_EXAMPLE], "total": 1, "offset": 0})

    machines: list[Machine]
    total: int = Field(default=0, ge=0, description="How many machines match the filters, all pages together.")
    offset: int = Field(default=0, ge=0)


class MachineUpdate(Message):
    """Change a machine's identity or power settings; fields left out (None) stay as they are. New
    ``power_secrets`` replace the stored ones; they are never returned."""

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "hostname": "node-renamed",
            "architecture": None,
            "boot_mac": None,
            "power_type": None,
            "power_parameters": None,
            "power_secrets": None,
            "idempotency_key": None,
        }
    )

    system_id: SystemId
    hostname: str | None = Field(default=None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    architecture: Architecture | None = None
    boot_mac: MacAddress | None = None
    power_type: PowerType | None = None
    power_parameters: JsonObject | None = None
    power_secrets: TextMap | None = Field(default=None, repr=False)
    idempotency_key: IdempotencyKey | None = None


class MachineDeleted(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m"})

    system_id: SystemId


class MachineActionRequest(Message):
    """Ask for an action on a machine; an action the current status does not allow is InvalidTransition."""

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "action": "commission",
            "reason": None,
            "commissioning_timeout_s": 1800,
            "scripts": ["smartctl-short"],
            "idempotency_key": "commission-x7kq2m-0001",
        }
    )

    system_id: SystemId
    action: MachineAction
    reason: str | None = Field(default=None, max_length=1000)
    commissioning_timeout_s: float | None = Field(default=None, gt=0, le=24 * 3600)
    scripts: list[Annotated[str, Field(pattern=SCRIPT_NAME_PATTERN)]] = Field(
        default_factory=list,
        max_length=50,
        description="commission: the operator's commissioning scripts to run after the inventory, in order.",
    )
    idempotency_key: IdempotencyKey | None = None


class MachineEvent(Message):
    """On ``events.machine.<system_id>``: a machine changed status."""

    model_config = examples(
        {
            "schema_version": 1,
            "sequence": 42,
            "system_id": "x7kq2m",
            "action": "commission",
            "from_status": "new",
            "to_status": "commissioning",
            "reason": None,
            "at": "2026-11-25T06:00:00Z",
        }
    )

    sequence: int = Field(description="Region-wide event sequence (the outbox row), increasing.")
    system_id: SystemId
    action: MachineAction | None
    from_status: MachineStatus | None
    to_status: MachineStatus
    reason: str | None = None
    at: datetime
