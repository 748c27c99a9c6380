"""Boot decisions: what a PXE-booting machine gets (purpose, kernel, initrd, squashfs, command line)."""

from datetime import datetime
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import Architecture, IdempotencyKey, MacAddress, SystemId
from metalbus.contracts.machines import BootPurpose
from metalbus.contracts.racks import RACK_ID_PATTERN

RACK_HTTP_PORT = 5248
"""The rack's HTTP port (boot files, ``/MAAS`` metadata), as on a MAAS rack; every default of it is this one."""
RACK_SYSLOG_PORT = 5247
"""The rack's syslog relay port that booting machines log to, as on a MAAS rack (rack-proxy also takes 514)."""

# Characters that GRUB or a shell would treat specially in a path inside a bootloader config.
_MANGLED = frozenset("\\\"'$;{}|&<>*?[]#")


def relative_boot_path(value: str) -> str:
    """A path under the rack's boot root: relative, no ``..``, no whitespace (it goes into bootloader configs)."""
    if not value or value.startswith("/") or any(part in {"", ".", ".."} for part in value.split("/")):
        raise ValueError(f"not a plain relative path under the boot root: {value!r}")
    if any(char.isspace() or not char.isprintable() or char in _MANGLED for char in value):
        raise ValueError(f"boot path holds a character bootloaders would mangle: {value!r}")
    return value


BootPath = Annotated[str, Field(max_length=255), AfterValidator(relative_boot_path)]

_RESOURCE = {
    "schema_version": 1,
    "architecture": "amd64/bios",
    "purpose": "commissioning",
    "kernel": "images/amd64/ephemeral/vmlinuz",
    "initrd": "images/amd64/ephemeral/initrd.img",
    "squashfs": "images/amd64/ephemeral/squashfs",
    "kernel_params": "console=ttyS0,115200",
}


class BootResource(Message):
    """Paths are relative to the rack's boot root (served over TFTP and http://<rack>:5248/)."""

    model_config = examples(_RESOURCE)

    architecture: Architecture
    purpose: BootPurpose
    kernel: BootPath
    initrd: BootPath
    squashfs: BootPath | None = None
    kernel_params: str = Field(
        default="",
        max_length=1024,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="Put first on the command line; metalbus adds its own metalbus.* parameters after them.",
    )


class BootResourceListQuery(Message):
    model_config = examples({"schema_version": 1})


class BootResourceList(Message):
    model_config = examples({"schema_version": 1, "resources": [_RESOURCE]})

    resources: list[BootResource]


class BootConfigQuery(Message):
    """Asked by rack-tftp (or the rack's HTTP boot) when a machine fetches its boot config."""

    model_config = examples(
        {
            "schema_version": 1,
            "mac": "52:54:00:12:34:56",
            "architecture": "amd64/bios",
            "rack_id": "rack-1",
            "rack_address": "10.20.0.2",
        }
    )

    mac: MacAddress
    architecture: Architecture
    rack_id: str
    rack_address: IPv4Address = Field(description="The rack address the machine reached: metadata URL host.")
    rack_http_port: int = Field(
        default=RACK_HTTP_PORT, ge=1, le=65535, description="The rack's HTTP port: metadata URL port."
    )
    rack_syslog_port: int | None = Field(
        default=RACK_SYSLOG_PORT,
        ge=1,
        le=65535,
        description="The rack's syslog relay port the booted environment logs to; null: the rack relays none.",
    )


class BootConfig(Message):
    """What the machine boots; the command line's metalbus.* parameters are described in the region's
    ``kernel_command_line`` module (purpose, system id, metadata URL on the rack, the machine's credentials)."""

    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "purpose": "commissioning",
            "kernel": "images/amd64/ephemeral/vmlinuz",
            "initrd": "images/amd64/ephemeral/initrd.img",
            "squashfs": "images/amd64/ephemeral/squashfs",
            "kernel_command_line": (
                "console=ttyS0,115200 metalbus.purpose=commissioning metalbus.system_id=x7kq2m "
                "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/ metalbus.consumer_key=cKey1234567890abcdef "
                "metalbus.token_key=tKey1234567890abcdef metalbus.token_secret=s3cr3t"
            ),
        }
    )

    system_id: SystemId | None
    purpose: BootPurpose
    kernel: str | None = Field(description="None: boot from local disk.")
    initrd: str | None
    squashfs: str | None
    kernel_command_line: str


# -- what the rack served to booting machines (TFTP and HTTP transfers) ------------------------------------------

MAX_TRANSFERS_PER_REPORT = 500
TransferProtocol = Literal["tftp", "http"]


_TRANSFER = {
    "schema_version": 1,
    "protocol": "http",
    "path": "images/amd64/ephemeral/vmlinuz",
    "client_ip": "10.20.0.101",
    "size_bytes": 8123456,
    "completed": True,
    "duration_s": 0.41,
    "finished_at": "2026-11-25T06:00:01Z",
}


class BootTransfer(Message):
    """One file a rack sent (or began to send) to a booting machine."""

    model_config = examples(_TRANSFER)

    protocol: TransferProtocol
    path: str = Field(max_length=1024)
    client_ip: IPv4Address
    size_bytes: int = Field(ge=0, description="The file's size (what a completed transfer sent).")
    completed: bool = Field(description="False: the client went away, stalled or timed out.")
    duration_s: float = Field(ge=0)
    finished_at: datetime


class BootTransferReport(Message):
    """Transfers one rack finished, reported together; ``batch_id`` makes a retried report count once."""

    model_config = examples(
        {
            "schema_version": 1,
            "rack_id": "rack-1",
            "batch_id": "transfers-rack-1-5f0c1d2e9a7b",
            "transfers": [_TRANSFER],
        }
    )

    rack_id: str = Field(pattern=RACK_ID_PATTERN)
    batch_id: IdempotencyKey | None = None
    transfers: list[BootTransfer] = Field(max_length=MAX_TRANSFERS_PER_REPORT)


class BootTransferAck(Message):
    """``attributed`` of the report's transfers were matched to a machine (by the lease on the client's address)
    and published as events; the others are counted, not kept."""

    model_config = examples({"schema_version": 1, "received": 1, "attributed": 1})

    received: int = Field(ge=0)
    attributed: int = Field(ge=0)


class BootTransferEvent(Message):
    """On ``events.boot.<system_id>``: the rack sent a machine a boot file."""

    model_config = examples(
        {
            "schema_version": 1,
            "sequence": 14,
            "system_id": "x7kq2m",
            "rack_id": "rack-1",
            "protocol": "tftp",
            "path": "pxelinux.cfg/01-52-54-00-12-34-56",
            "client_ip": "10.20.0.101",
            "size_bytes": 412,
            "completed": True,
            "duration_s": 0.01,
            "at": "2026-11-25T06:00:01Z",
        }
    )

    sequence: int
    system_id: SystemId
    rack_id: str
    protocol: TransferProtocol
    path: str
    client_ip: IPv4Address
    size_bytes: int
    completed: bool
    duration_s: float
    at: datetime
