"""Boot decisions: what a PXE-booting machine gets (purpose, kernel, initrd, squashfs, command line)."""

from ipaddress import IPv4Address

from pydantic import Field

from metalbus.contracts.base import Message, examples
from metalbus.contracts.common import Architecture, MacAddress, SystemId
from metalbus.contracts.machines import BootPurpose

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
    kernel: str
    initrd: str
    squashfs: str | None = None
    kernel_params: str = ""


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


class BootConfig(Message):
    model_config = examples(
        {
            "schema_version": 1,
            "system_id": "x7kq2m",
            "purpose": "commissioning",
            "kernel": "images/amd64/ephemeral/vmlinuz",
            "initrd": "images/amd64/ephemeral/initrd.img",
            "squashfs": "images/amd64/ephemeral/squashfs",
            "kernel_command_line": "console=ttyS0,115200 metalbus.url=http://10.20.0.2:5248/MAAS/metadata/",
        }
    )

    system_id: SystemId | None
    purpose: BootPurpose
    kernel: str | None = Field(description="None: boot from local disk.")
    initrd: str | None
    squashfs: str | None
    kernel_command_line: str
