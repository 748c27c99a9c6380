"""Which boot file a DHCP client is given: MAAS's architecture / client-class table as one pure function.

The order of the rules, first match wins:

====================================================  =====================================================
client (options 77, 60, 93)                           boot file (``file`` field and option 67)
====================================================  =====================================================
user class (77) ``iPXE``, any architecture            ``http://<rack>:<http_port>/ipxe.cfg-${mac}`` + 175
vendor class ``HTTPClient…``, arch 16 (x86-64 HTTP)   ``http://<rack>:<http_port>/images/bootx64.efi`` + 60
vendor class ``HTTPClient…``, arch 19 (arm64 HTTP)    ``http://<rack>:<http_port>/images/grubaa64.efi`` + 60
arch 0 (x86 BIOS), or ``PXEClient…`` without 93       ``lpxelinux.0`` over TFTP, option 66 = rack
arch 7 or 9 (x86-64 EFI)                              ``bootx64.efi`` (signed shim, then grub) + 66
arch 11 (arm64 EFI)                                   ``grubaa64.efi`` + 66
anything else with 93 or a PXE/HTTP vendor class      no boot file: the firmware cannot be booted by us
no 93, no ``PXEClient``/``HTTPClient`` vendor class   no boot file: not a network-booting client
====================================================  =====================================================

iPXE expands ``${mac}`` in the file name it was given (``autoboot.c`` runs ``expand_settings`` on it) into the
booting NIC's MAC in lowercase colon form, so it fetches e.g. ``/ipxe.cfg-52:54:00:12:34:56``: the HTTP server
on the rack must serve that path (MAAS lays out its rack's HTTP root the same way). UEFI HTTP boot requires the
offer to carry option 60 ``HTTPClient``, so that row echoes it; PXE rows do not send 60 (``PXEClient`` there
would make some ROMs wait for a PXE boot server discovery that we do not run).
"""

from dataclasses import dataclass
from ipaddress import IPv4Address

from metalbus_rack_dhcp.codec import is_ipxe_user_class
from metalbus_rack_dhcp.messages import ClientArchitecture, DhcpMessage, Option

PXE_VENDOR_CLASS = b"PXEClient"
HTTP_VENDOR_CLASS = b"HTTPClient"
IPXE_NO_PROXY_DHCP = bytes((176, 1, 1))
"""Option 175 (iPXE's encapsulated options) holding sub-option 176 ``no-pxedhcp`` = 1: iPXE then does not wait
≈ 3 s for ProxyDHCP offers that nobody sends (measured in qemu: 5.4 s → 2.4 s from power-on to the script)."""
IPXE_SCRIPT_PATH = "/ipxe.cfg-${mac}"
"""Where iPXE fetches its per-machine script on the rack's HTTP server; iPXE substitutes ``${mac}``."""

TFTP_BOOT_FILES: dict[int, str] = {
    ClientArchitecture.X86_BIOS: "lpxelinux.0",
    ClientArchitecture.X86_64_EFI: "bootx64.efi",
    ClientArchitecture.X86_64_EFI_BC: "bootx64.efi",
    ClientArchitecture.ARM64_EFI: "grubaa64.efi",
}
HTTP_BOOT_FILES: dict[int, str] = {
    ClientArchitecture.X86_64_EFI_HTTP: "/images/bootx64.efi",
    ClientArchitecture.ARM64_EFI_HTTP: "/images/grubaa64.efi",
}


@dataclass(frozen=True)
class BootClient:
    """What a request says about the firmware asking: its architecture (93), vendor class (60), iPXE (77)."""

    architecture: int | None = None
    vendor_class: bytes = b""
    ipxe: bool = False

    @property
    def http_boot(self) -> bool:
        return self.vendor_class.startswith(HTTP_VENDOR_CLASS)

    @property
    def pxe_boot(self) -> bool:
        return self.architecture is not None or self.vendor_class.startswith(PXE_VENDOR_CLASS)


@dataclass(frozen=True)
class BootChoice:
    """The boot part of a reply; ``next_server`` (siaddr) is the rack itself whenever there is a choice."""

    file: str
    """The ``file`` field and option 67."""
    tftp_server_name: str | None = None
    """Option 66, for TFTP rows: the rack's address as text."""
    vendor_class: bytes | None = None
    """Option 60 to send back (UEFI HTTP boot only)."""
    ipxe_options: bytes | None = None
    """Option 175 to send (iPXE only)."""


def read_boot_client(message: DhcpMessage) -> BootClient:
    """Options 93, 60 and 77 of a request; a malformed option 93 counts as absent."""
    architectures = message.option(Option.CLIENT_ARCHITECTURE) or b""
    user_class = message.option(Option.USER_CLASS)
    return BootClient(
        architecture=int.from_bytes(architectures[:2], "big") if len(architectures) >= 2 else None,
        vendor_class=message.option(Option.VENDOR_CLASS) or b"",
        ipxe=user_class is not None and is_ipxe_user_class(user_class),
    )


def choose_boot(client: BootClient, rack_address: IPv4Address, http_port: int) -> BootChoice | None:
    """The table of the module docstring; None means "give this client an address but nothing to boot"."""
    http_root = f"http://{rack_address}:{http_port}"
    if client.ipxe:
        return BootChoice(file=http_root + IPXE_SCRIPT_PATH, ipxe_options=IPXE_NO_PROXY_DHCP)
    if client.http_boot:
        path = HTTP_BOOT_FILES.get(client.architecture) if client.architecture is not None else None
        return None if path is None else BootChoice(file=http_root + path, vendor_class=HTTP_VENDOR_CLASS)
    if client.pxe_boot:
        architecture = ClientArchitecture.X86_BIOS if client.architecture is None else client.architecture
        name = TFTP_BOOT_FILES.get(architecture)
        return None if name is None else BootChoice(file=name, tftp_server_name=str(rack_address))
    return None
