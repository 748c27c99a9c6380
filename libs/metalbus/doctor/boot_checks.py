"""Are the boot files rack-dhcp hands out present in rack-tftp's boot root (and what each loader fetches next)?

The names come from rack-dhcp's own tables (``TFTP_BOOT_FILES``, ``HTTP_BOOT_FILES``), so this check and the
DHCP answers cannot disagree; the second stages are what those loaders load from beside themselves
(scripts/boot-files.sh installs both).
"""

from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from metalbus.doctor.report import Check, failed, ok
from metalbus_rack_dhcp.boot_files import HTTP_BOOT_FILES, TFTP_BOOT_FILES
from metalbus_rack_dhcp.messages import ClientArchitecture

AMD64 = (
    ClientArchitecture.X86_BIOS,
    ClientArchitecture.X86_64_EFI,
    ClientArchitecture.X86_64_EFI_BC,
    ClientArchitecture.X86_64_EFI_HTTP,
)
ARM64 = (ClientArchitecture.ARM64_EFI, ClientArchitecture.ARM64_EFI_HTTP)
SECOND_STAGES = {"lpxelinux.0": ("ldlinux.c32",), "bootx64.efi": ("grubx64.efi",)}
"""lpxelinux loads ldlinux.c32 from the boot root; shim chain-loads grubx64.efi from its own directory."""
FILL_COMMAND = "scripts/boot-files.sh"


def boot_files_for(architectures: Iterable[ClientArchitecture]) -> list[str]:
    """The paths (relative to the boot root) a machine of these architectures fetches, loaders and second stages."""
    tables = TFTP_BOOT_FILES | HTTP_BOOT_FILES
    names: list[str] = []
    for architecture in architectures:
        loader = PurePosixPath(tables[architecture].lstrip("/"))
        for name in (loader, *(loader.parent / stage for stage in SECOND_STAGES.get(loader.name, ()))):
            if str(name) not in names:
                names.append(str(name))
    return names


def missing_in(root: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (root / name).is_file()]


def check_boot_files(root: Path) -> Check:
    name = "boot files"
    fill = f"{FILL_COMMAND} {root}"
    if not root.is_dir():
        return failed(name, f"boot root {root} does not exist", f"run {fill} (or set METALBUS_RACK_TFTP_BOOT_ROOT)")
    missing = missing_in(root, boot_files_for(AMD64))
    if missing:
        return failed(name, f"missing in {root}: {', '.join(missing)} (amd64 machines cannot boot)", f"run {fill}")
    arm64_missing = missing_in(root, boot_files_for(ARM64))
    arm64 = f"arm64 absent ({', '.join(arm64_missing)})" if arm64_missing else "arm64 present"
    return ok(name, f"amd64 BIOS and UEFI loaders present in {root}; {arm64}")
