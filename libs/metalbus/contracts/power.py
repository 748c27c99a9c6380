"""Power commands the region sends to the rack that reaches a machine's BMC, and power events."""

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import SystemId
from metalbus.contracts.machines import PowerType


class PowerAction(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    QUERY = "query"


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerCommand(Message):
    """Sent on ``rack.<rack_id>.power.command``; ``secrets`` travel only here and are never logged."""

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "action": "on",
            "power_type": "ipmi",
            "parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
            "secrets": {"password": "s3cret"},
        }
    )

    system_id: SystemId
    action: PowerAction
    power_type: PowerType
    parameters: dict[str, Any] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)


class PowerResult(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "state": "on"})

    system_id: SystemId
    state: PowerState


class PowerEvent(Message):
    """On ``events.power.<system_id>``."""

    model_config = examples(
        {"schema_version": 1, "sequence": 3, "system_id": "x7kq2m", "action": "on", "state": "on", "rack_id": "rack-1",
         "at": "2026-11-25T06:00:00Z"}
    )  # fmt: skip

    sequence: int
    system_id: SystemId
    action: PowerAction
    state: PowerState
    rack_id: str | None
    at: datetime
