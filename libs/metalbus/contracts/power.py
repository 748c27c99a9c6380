"""Power commands the region sends to the rack that reaches a machine's BMC, and power events."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import IdempotencyKey, SystemId
from metalbus.contracts.machines import PowerState as PowerState  # re-exported: importers of power use it
from metalbus.contracts.machines import PowerType
from metalbus.contracts.racks import RACK_ID_PATTERN


class PowerAction(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    QUERY = "query"


class PowerCommand(Message):
    """Sent on ``rack.<rack_id>.power.command``; ``secrets`` travel only here and are never logged.

    ``idempotency_key`` names one power operation: a rack that sees the same key again (the region retried after
    a lost reply) answers with the state it reached instead of acting twice.
    """

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "action": "on",
            "power_type": "ipmi",
            "parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
            "secrets": {"password": "s3cret"},
            "idempotency_key": "power-x7kq2m-on-5f0c1d2e",
        }
    )

    system_id: SystemId
    action: PowerAction
    power_type: PowerType
    parameters: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)
    idempotency_key: IdempotencyKey | None = None
    boot_from_network: bool = Field(
        default=False, description="Before powering on (on, cycle): set the next boot device to PXE (commissioning)."
    )


class PowerResult(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "state": "on"})

    system_id: SystemId
    state: PowerState


class PowerEvent(Message):
    """On ``events.power.<system_id>``: a power command's outcome. ``error`` says why it failed (no rack reaches
    the BMC, no rack answered, the BMC refused); then ``state`` is unknown. ``rack_id`` is the rack that answered."""

    model_config = examples(
        {"schema_version": 1, "sequence": 3, "system_id": "x7kq2m", "action": "on", "state": "on", "rack_id": "rack-1",
         "at": "2026-11-25T06:00:00Z", "error": None},
        {"schema_version": 1, "sequence": 4, "system_id": "x7kq2m", "action": "on", "state": "unknown",
         "rack_id": None, "at": "2026-11-25T06:00:01Z", "error": "no healthy rack reaches BMC 10.0.0.21"},
    )  # fmt: skip

    sequence: int
    system_id: SystemId
    action: PowerAction
    state: PowerState
    rack_id: str | None
    at: datetime
    error: str | None = None


class MachinePowerRequest(Message):
    """An operator's power action on a machine: the region picks the rack that reaches its BMC."""

    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "action": "query"})

    system_id: SystemId
    action: PowerAction


class PowerTargetsQuery(Message):
    """A rack's rack-power asks which machines to poll: those with a BMC (ipmi, redfish) on its networks."""

    model_config = examples({"schema_version": 1, "rack_id": "rack-1"})

    rack_id: str = Field(pattern=RACK_ID_PATTERN)


class PowerTargetSpec(Message):
    """One machine to poll; ``secrets`` travel only here and are never logged."""

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "power_type": "ipmi",
            "parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
            "secrets": {"password": "s3cret"},
        }
    )

    system_id: SystemId
    power_type: PowerType
    parameters: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)


class PowerTargets(Message):
    model_config = examples({"schema_version": 1, "targets": []})

    targets: list[PowerTargetSpec]


class PowerObservation(Message):
    """A rack saw a machine's power state change (polling reports changes only)."""

    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "rack_id": "rack-1", "state": "on"})

    system_id: SystemId
    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    state: PowerState


class PowerObservationAck(Message):
    """``changed``: the region's recorded state differed and was updated (a power event was recorded)."""

    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "changed": True})

    system_id: SystemId
    changed: bool
