"""Boot decisions: what a PXE-booting machine gets (purpose, kernel, initrd, squashfs, command line)."""

from ipaddress import IPv4Address
from typing import Annotated

from pydantic import AfterValidator, Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import Architecture, MacAddress, SystemId
from metalbus.contracts.machines import BootPurpose

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
