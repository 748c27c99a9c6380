"""The metadata service behind the rack's proxy: per-machine OAuth tokens, meta-data reads, result intake.

Paths and semantics follow cloud-init's MAAS datasource (``<ver>/meta-data/instance-id`` …); the rack turns
HTTP into these requests and the region answers only for the token's own machine.
"""

from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import Field, model_validator

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import MacAddress, SystemId
from metalbus.contracts.machines import MachineStatus

# The script result whose output is the machine's HardwareInventory (JSON on stdout, or its ``result``).
INVENTORY_RESULT_NAME = "metalbus-inventory"

# Counts and sizes are stored as PostgreSQL integers.
_INT32_MAX = 2**31 - 1

_CREDENTIALS = {
    "consumer_key": "cKey1234567890abcdef",
    "token_key": "tKey1234567890abcdef",
    "token_secret": "s3cr3t",
}


class OAuthCredentials(Message):
    """OAuth 1.0a PLAINTEXT credentials of one machine (the consumer secret is empty, as in MAAS)."""

    model_config = examples({"schema_version": 1} | _CREDENTIALS)

    consumer_key: str = Field(min_length=1, max_length=64)
    token_key: str = Field(min_length=1, max_length=64)
    token_secret: str = Field(min_length=1, max_length=128, repr=False)


class MetadataItem(StrEnum):
    INSTANCE_ID = "instance-id"
    LOCAL_HOSTNAME = "local-hostname"
    PUBLIC_KEYS = "public-keys"
    VENDOR_DATA = "vendor-data"
    USER_DATA = "user-data"


class MetadataRead(Message):
    model_config = examples({"schema_version": 1, "credentials": _CREDENTIALS, "item": "local-hostname"})

    credentials: OAuthCredentials
    item: MetadataItem


class MetadataReadEvent(Message):
    """On ``events.metadata.<system_id>``: the machine read one metadata item (through its rack's proxy)."""

    model_config = examples(
        {"schema_version": 1, "sequence": 11, "system_id": "x7kq2m", "item": "user-data", "at": "2026-11-25T06:00:00Z"}
    )

    sequence: int
    system_id: SystemId
    item: MetadataItem
    at: datetime


class MetadataValue(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "item": "local-hostname", "content": "node-1"})

    system_id: SystemId
    item: MetadataItem
    content: str


class SignalStatus(StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    WORKING = "WORKING"
    COMMISSIONING = "COMMISSIONING"


class ScriptResult(Message):
    """One commissioning script's outcome (``.out``, ``.err`` and ``.yaml``/JSON result files of MAAS)."""

    model_config = examples(
        {
            "schema_version": 1,
            "name": "metalbus-inventory",
            "exit_status": 0,
            "stdout": '{"cpu_model": "QEMU Virtual CPU", "cpu_count": 2, "memory_mib": 2048}',
            "stderr": "",
            "result": None,
            "runtime_s": 1.5,
        }
    )

    name: str = Field(min_length=1, max_length=255)
    exit_status: int = Field(ge=-(2**31), le=_INT32_MAX)
    stdout: str = Field(default="", max_length=4 * 1024 * 1024)
    stderr: str = Field(default="", max_length=4 * 1024 * 1024)
    result: dict[str, Any] | None = None
    runtime_s: float | None = Field(default=None, ge=0)


class MetadataSignal(Message):
    """POST <ver>/ op=signal: progress, script results, and the final OK / FAILED."""

    model_config = examples(
        {
            "schema_version": 1,
            "credentials": _CREDENTIALS,
            "status": "OK",
            "error": None,
            "results": [],
        }
    )

    credentials: OAuthCredentials
    status: SignalStatus
    error: str | None = Field(default=None, max_length=10_000)
    results: list[ScriptResult] = Field(default_factory=list)


class SignalAck(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "status": "ready"})

    system_id: SystemId
    status: MachineStatus


class BlockDevice(Message):
    model_config = examples({"schema_version": 1, "name": "vda", "size_bytes": 10737418240, "model": "", "serial": ""})

    name: str
    size_bytes: int = Field(ge=0)
    model: str = ""
    serial: str = ""


class NetworkInterface(Message):
    model_config = examples(
        {"schema_version": 1, "name": "eth0", "mac": "52:54:00:12:34:56", "link_up": True, "speed_mbps": 1000}
    )

    name: str = Field(min_length=1, max_length=64)
    mac: MacAddress
    link_up: bool = False
    speed_mbps: int | None = Field(default=None, ge=0, le=_INT32_MAX)


class LldpNeighbour(Message):
    model_config = examples(
        {"schema_version": 1, "interface": "eth0", "chassis_id": "aa:bb:cc:00:00:01", "port_id": "ge-0/0/1",
         "system_name": "tor-1"}
    )  # fmt: skip

    interface: str
    chassis_id: str
    port_id: str
    system_name: str | None = None


class HardwareInventory(Message):
    """What commissioning learnt: the ``metalbus-inventory`` script prints this as JSON.

    Interface names are unique (they key the region's interface rows); so are block device names.
    """

    model_config = examples(
        {
            "schema_version": 1,
            "cpu_model": "QEMU Virtual CPU",
            "cpu_count": 2,
            "cpu_speed_mhz": 2000,
            "memory_mib": 2048,
            "block_devices": [],
            "interfaces": [],
            "lldp_neighbours": [],
        }
    )

    cpu_model: str = Field(max_length=255)
    cpu_count: int = Field(ge=1, le=_INT32_MAX)
    cpu_speed_mhz: int | None = Field(default=None, ge=0, le=_INT32_MAX)
    memory_mib: int = Field(ge=1, le=_INT32_MAX)
    block_devices: list[BlockDevice] = Field(default_factory=list)
    interfaces: list[NetworkInterface] = Field(default_factory=list)
    lldp_neighbours: list[LldpNeighbour] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        for kind, names in (
            ("interface", [interface.name for interface in self.interfaces]),
            ("block device", [device.name for device in self.block_devices]),
        ):
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"{kind} names repeat: {', '.join(repeated)}")
        return self


class ResultEvent(Message):
    """On ``events.result.<system_id>``: a commissioning script's result was stored."""

    model_config = examples(
        {"schema_version": 1, "sequence": 9, "system_id": "x7kq2m", "name": "metalbus-inventory", "exit_status": 0,
         "at": "2026-11-25T06:00:00Z"}
    )  # fmt: skip

    sequence: int
    system_id: SystemId
    name: str
    exit_status: int
    at: datetime


class StoredScriptResult(Message):
    """A commissioning script result as the region stored it."""

    model_config = examples(
        {
            "schema_version": 1,
            "name": "metalbus-inventory",
            "exit_status": 0,
            "stdout": "{}",
            "stderr": "",
            "result": None,
            "runtime_s": 1.5,
            "recorded_at": "2026-11-25T06:00:00Z",
        }
    )

    name: str
    exit_status: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None
    runtime_s: float | None
    recorded_at: datetime


class ScriptResultList(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m", "results": []})

    system_id: SystemId
    results: list[StoredScriptResult]


# -- cloud-init's MAAS reporter: POST status/<system_id> (a JSON event per stage) -----------------------------------

_STATUS_REPORT = {
    "event_type": "finish",
    "origin": "cloudinit",
    "name": "modules-final",
    "description": "running modules for final",
    "result": "SUCCESS",
    "timestamp": 1764043200.5,
}


class MetadataStatusReport(Message):
    """One event cloud-init's reporting webhook posted to ``status/<system_id>``, for the token's own machine.

    The rack truncates long texts rather than refusing them: a progress report is never worth failing a boot.
    """

    model_config = examples({"schema_version": 1, "credentials": _CREDENTIALS, "system_id": "x7kq2m"} | _STATUS_REPORT)

    credentials: OAuthCredentials
    system_id: SystemId
    event_type: str = Field(min_length=1, max_length=40)
    origin: str = Field(default="", max_length=40)
    name: str = Field(default="", max_length=255)
    description: str = Field(default="", max_length=2000)
    result: str | None = Field(default=None, max_length=40)
    timestamp: float | None = Field(default=None, ge=0, le=253402300799)
    """Seconds since the epoch on the machine's clock, as cloud-init sends it."""


class StatusReportAck(Message):
    model_config = examples({"schema_version": 1, "system_id": "x7kq2m"})

    system_id: SystemId


class StatusReportEvent(Message):
    """On ``events.cloud-init.<system_id>``: a machine's cloud-init reported a stage's start or finish."""

    model_config = examples(
        {"schema_version": 1, "sequence": 12, "system_id": "x7kq2m", "reported_at": "2025-11-25T04:00:00.5Z",
         "at": "2026-11-25T06:00:00Z"}
        | {key: value for key, value in _STATUS_REPORT.items() if key != "timestamp"}
    )  # fmt: skip

    sequence: int
    system_id: SystemId
    event_type: str
    origin: str
    name: str
    description: str
    result: str | None
    reported_at: datetime | None
    """The machine's own clock (may be wrong); ``at`` is the region's."""
    at: datetime
