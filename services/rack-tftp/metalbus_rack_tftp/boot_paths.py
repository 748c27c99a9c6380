"""Names of per-machine boot configs: which requested path is which loader's config for which MAC (pure).

Each loader looks for its config in its own way; the names this module takes (any leading directories allowed,
so that a loader living in a subdirectory of the boot root still matches; leading ``/`` ignored):

==========================================  ==================================================================
requested path                              meaning
==========================================  ==================================================================
``pxelinux.cfg/<uuid>``                     pxelinux's first try: not ours (NOT_FOUND, pxelinux goes on)
``pxelinux.cfg/01-aa-bb-cc-dd-ee-ff``       the machine's config; lpxelinux is BIOS only → ``amd64/bios``
``pxelinux.cfg/C0A80001`` … ``C``           hex IP prefixes: not ours (NOT_FOUND, pxelinux goes on)
``pxelinux.cfg/default``                    the end of pxelinux's chain: no MAC, so no region answer can be
                                            asked for; served as "boot the local disk" (see below)
``grub.cfg``, ``<cpu>-efi/grub.cfg``        GRUB's own config (grub-mknetdir's and Debian's netboot images
                                            look at ``$prefix/x86_64-efi/grub.cfg``): a bootstrap that reads
                                            ``grub.cfg-${net_default_mac}-${grub_cpu}``
``grub.cfg-aa-bb-cc-dd-ee-ff``              GRUB 2.06's net config search by MAC: the same bootstrap
``grub.cfg-<uuid>``, ``grub.cfg-C0A8…``     GRUB's other search names: not ours
``grub.cfg-aa:bb:cc:dd:ee:ff-<grub_cpu>``   the machine's config; ``x86_64`` → ``amd64/uefi``, ``arm64`` →
                                            ``arm64/uefi``
``grub.cfg-aa:bb:cc:dd:ee:ff``              MAAS's name (its bootstrap has no CPU): ``amd64/uefi``
``ipxe.cfg``, ``ipxe.cfg-aa:bb:…:ff``       the iPXE script rack-dhcp hands out (``ipxe.cfg-${mac}``): a
                                            bootstrap that chains to ``ipxe.cfg-<mac>-${buildarch}-${platform}``
``ipxe.cfg-<mac>-<buildarch>-<platform>``   the machine's config; ``x86_64``/``i386`` + ``pcbios`` →
                                            ``amd64/bios``, ``x86_64`` + ``efi`` → ``amd64/uefi``, ``arm64`` +
                                            ``efi`` → ``arm64/uefi``
==========================================  ==================================================================

iPXE's BIOS build calls itself ``i386`` whatever the CPU (seen in qemu), hence ``i386`` + ``pcbios`` → amd64; iPXE
percent-encodes the colons of the MAC in the URL (``ipxe.cfg-52%3A54%3A…``), so names are unquoted first.

Why bootstraps: the region needs the machine's architecture (it picks the boot resource by it), and neither
GRUB's search names nor iPXE's ``ipxe.cfg-${mac}`` carry it; the loader itself fills it in (``${grub_cpu}``,
``${buildarch}``/``${platform}``) in a second request, so rack-dhcp's iPXE URL stays as it is. A bootstrap is
rendered without asking the region.

Why ``pxelinux.cfg/default`` boots the local disk: pxelinux asks ``01-<mac>`` before it, so ``default`` is only
reached when the region could not answer for this MAC; then every loader does the same thing (the GRUB and iPXE
bootstraps too): hand the machine back to its firmware's boot order, as Tinkerbell does, rather than enlist a
machine whose MAC we do not know (MAAS serves ``default`` as enlistment; it can, we cannot without a MAC).
"""

import re
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from urllib.parse import unquote

from metalbus.contracts.boot import RACK_HTTP_PORT
from metalbus.contracts.common import Architecture, normalise_mac


class Loader(StrEnum):
    PXELINUX = "pxelinux"
    GRUB = "grub"
    IPXE = "ipxe"


@dataclass(frozen=True)
class MachineConfigPath:
    """A machine's own config: ask the region what ``mac`` boots on ``architecture``, render it for ``loader``."""

    loader: Loader
    mac: str
    architecture: Architecture


@dataclass(frozen=True)
class BootstrapPath:
    """A loader's generic first config that makes it ask again with its architecture; ``mac`` when the name
    held one (iPXE's bootstrap uses it; GRUB's uses ``${net_default_mac}``)."""

    loader: Loader
    mac: str | None = None


@dataclass(frozen=True)
class LocalFallbackPath:
    """The end of a loader's search with no MAC to ask about: boot the local disk."""

    loader: Loader


BootConfigPath = MachineConfigPath | BootstrapPath | LocalFallbackPath

_DIRS = r"(?:(?!\.\.?/)[A-Za-z0-9._-]+/)*"  # no "." or ".." (the static root refuses those)
_MAC_DASHES = r"[0-9a-f]{2}(?:-[0-9a-f]{2}){5}"
_MAC_COLONS = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
_MAC_EITHER = r"[0-9a-f]{2}(?:[:-][0-9a-f]{2}){5}"

_PXELINUX_MAC = re.compile(rf"{_DIRS}pxelinux\.cfg/01-(?P<mac>{_MAC_DASHES})", re.IGNORECASE)
_PXELINUX_DEFAULT = re.compile(rf"{_DIRS}pxelinux\.cfg/default")
_GRUB_BOOTSTRAP = re.compile(
    rf"{_DIRS}(?:(?:x86_64|arm64)-efi/)?grub\.cfg|{_DIRS}grub\.cfg-{_MAC_DASHES}", re.IGNORECASE
)
_GRUB_MACHINE = re.compile(rf"{_DIRS}grub\.cfg-(?P<mac>{_MAC_COLONS})(?:-(?P<cpu>x86_64|arm64))?", re.IGNORECASE)
_IPXE_BOOTSTRAP = re.compile(rf"{_DIRS}ipxe\.cfg(?:-(?P<mac>{_MAC_EITHER}))?", re.IGNORECASE)
_IPXE_MACHINE = re.compile(
    rf"{_DIRS}ipxe\.cfg-(?P<mac>{_MAC_EITHER})-(?P<buildarch>x86_64|i386|arm64)-(?P<platform>pcbios|efi)",
    re.IGNORECASE,
)

GRUB_ARCHITECTURES = {"x86_64": Architecture.AMD64_UEFI, "arm64": Architecture.ARM64_UEFI}
"""GRUB's ``${grub_cpu}`` → the region's architecture (GRUB serves only UEFI here)."""
IPXE_ARCHITECTURES = {
    ("x86_64", "pcbios"): Architecture.AMD64_BIOS,
    ("i386", "pcbios"): Architecture.AMD64_BIOS,
    ("x86_64", "efi"): Architecture.AMD64_UEFI,
    ("arm64", "efi"): Architecture.ARM64_UEFI,
}
"""iPXE's ``(${buildarch}, ${platform})`` → the region's architecture; other pairs have no boot resources."""


def parse_boot_config_path(path: str) -> BootConfigPath | None:
    """What a requested path is, or None when it is not a per-machine boot config (the next source's)."""
    name = unquote(path).lstrip("/") if "%" in path else path.lstrip("/")
    return _pxelinux(name) or _grub(name) or _ipxe(name)


def _pxelinux(name: str) -> BootConfigPath | None:
    if match := _PXELINUX_MAC.fullmatch(name):
        return MachineConfigPath(Loader.PXELINUX, normalise_mac(match["mac"]), Architecture.AMD64_BIOS)
    if _PXELINUX_DEFAULT.fullmatch(name):
        return LocalFallbackPath(Loader.PXELINUX)
    return None


def _grub(name: str) -> BootConfigPath | None:
    if _GRUB_BOOTSTRAP.fullmatch(name):
        return BootstrapPath(Loader.GRUB)
    if match := _GRUB_MACHINE.fullmatch(name):
        architecture = GRUB_ARCHITECTURES[match["cpu"].lower()] if match["cpu"] else Architecture.AMD64_UEFI
        return MachineConfigPath(Loader.GRUB, normalise_mac(match["mac"]), architecture)
    return None


def _ipxe(name: str) -> BootConfigPath | None:
    if match := _IPXE_MACHINE.fullmatch(name):
        architecture = IPXE_ARCHITECTURES.get((match["buildarch"].lower(), match["platform"].lower()))
        return (
            None if architecture is None else MachineConfigPath(Loader.IPXE, normalise_mac(match["mac"]), architecture)
        )
    if match := _IPXE_BOOTSTRAP.fullmatch(name):
        return BootstrapPath(Loader.IPXE, normalise_mac(match["mac"]) if match["mac"] else None)
    return None


@dataclass(frozen=True)
class BootServer:
    """Where rendered configs point the loader: the rack address the machine reached, the HTTP boot port, and
    whether kernels and initrds are fetched over HTTP (else TFTP)."""

    rack_address: IPv4Address
    http_port: int = RACK_HTTP_PORT
    kernels_over_http: bool = True

    def http_url(self, path: str) -> str:
        """``http://<rack>:<port>/<path>`` for a path relative to the boot root."""
        return f"http://{self.rack_address}:{self.http_port}/{path}"


def bootif_parameter(mac: str) -> str:
    """``BOOTIF=01-aa-bb-cc-dd-ee-ff``: tells the initramfs which NIC the machine booted from (pxelinux's
    ``IPAPPEND 2`` form, which MAAS passes with every loader)."""
    return "BOOTIF=01-" + mac.replace(":", "-")
