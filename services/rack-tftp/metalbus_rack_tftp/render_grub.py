"""Render a boot decision as a GRUB (EFI) config, and GRUB's static bootstrap: pure text, no I/O.

Kernel and initrd come from ``(http,<rack>:<port>)/…`` with ``kernels_over_http`` (GRUB ≥ 2.06 takes a port in
the device name; Debian 12's netboot image carries the ``http`` module), else from ``(tftp,<rack>)/…``.

"Boot the local disk" on EFI (modelled on MAAS's ``uefi/config.local.*`` templates): search the disks for a
known EFI loader — the distributions' shims and GRUBs first, then the removable-media path ``/EFI/BOOT/BOOTX64.EFI``
(``BOOTAA64.EFI`` on arm64), then Windows's — and chainload the first found (the EFI system partition is FAT,
so the case of the names does not matter). The partition-table and FAT modules are loaded first: a modular
network GRUB (``grub-mknetdir``, as ``scripts/boot-files.sh`` builds it) does not autoload file systems, and
``search`` then finds nothing (seen in qemu/OVMF); in a monolithic image ``insmod`` of a built-in is a no-op.
If no loader is found, ``exit 1``: a non-zero status makes the firmware try its next boot option, where status 0
drops some firmware into its setup menu.

The bootstrap (served for ``grub.cfg`` and GRUB's by-MAC search name) asks for this machine's config with its
CPU in the name, ``${prefix}/grub.cfg-${net_default_mac}-${grub_cpu}``, over whatever protocol GRUB itself came
(no device in the path); if that fails (the region did not answer), it hands back to the firmware the same way.
A network boot entry that fails (kernel not found) falls back (GRUB's ``fallback``) to an entry doing the same.
"""

import re

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus_rack_tftp.boot_paths import BootServer, bootif_parameter

HEADER = 'set default="0"\nset timeout=0\n'

BOOTSTRAP = (
    "# metalbus: ask for this machine's own config, named by the MAC it booted from and GRUB's CPU.\n"
    + HEADER
    + "configfile ${prefix}/grub.cfg-${net_default_mac}-${grub_cpu}\n"
    'echo "metalbus: no boot config for ${net_default_mac}: on to the next boot option of the firmware"\n'
    "exit 1\n"
)

EFI_LOADERS: dict[Architecture, tuple[str, ...]] = {
    Architecture.AMD64_UEFI: (
        "/efi/ubuntu/shimx64.efi",
        "/efi/debian/shimx64.efi",
        "/efi/redhat/shimx64.efi",
        "/efi/centos/shimx64.efi",
        "/efi/rocky/shimx64.efi",
        "/efi/ubuntu/grubx64.efi",
        "/efi/debian/grubx64.efi",
        "/efi/boot/bootx64.efi",
        "/efi/microsoft/boot/bootmgfw.efi",
    ),
    Architecture.ARM64_UEFI: (
        "/efi/ubuntu/shimaa64.efi",
        "/efi/debian/shimaa64.efi",
        "/efi/ubuntu/grubaa64.efi",
        "/efi/debian/grubaa64.efi",
        "/efi/boot/bootaa64.efi",
    ),
}
"""Where an installed system keeps its EFI loader, most specific first (the removable-media path last but one)."""

# Words GRUB passes on as written; anything else is single-quoted so GRUB neither expands nor splits it.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9._~:/@+,=%-]+")


def render_grub_config(config: BootConfig, *, mac: str, architecture: Architecture, server: BootServer) -> str:
    """The whole config file for ``mac`` on ``architecture`` (amd64/uefi or arm64/uefi)."""
    if config.kernel is None or config.initrd is None:
        return render_grub_local_boot(architecture)
    words = [*config.kernel_command_line.split(), bootif_parameter(mac)]
    return (
        HEADER
        + 'set fallback="1"\n'
        + "\n"
        + f"menuentry 'metalbus {config.purpose.value}' {{\n"
        + f"    echo 'Booting under metalbus direction: {config.purpose.value}...'\n"
        + f"    linux {_location(config.kernel, server)} {' '.join(grub_word(word) for word in words)}\n"
        + f"    initrd {_location(config.initrd, server)}\n"
        + "}\n"
        + "\n"
        + "menuentry 'Next boot option of the firmware' {\n"
        + "    exit 1\n"
        + "}\n"
    )


def render_grub_local_boot(architecture: Architecture) -> str:
    loaders = EFI_LOADERS.get(architecture, EFI_LOADERS[Architecture.AMD64_UEFI])
    loader_list = " \\\n            ".join(loaders)
    return (
        HEADER
        + "\n"
        + "menuentry 'Local disk' {\n"
        + "    echo 'Booting the local disk under metalbus direction...'\n"
        + "    insmod part_gpt\n"
        + "    insmod part_msdos\n"
        + "    insmod fat\n"
        + f"    for loader in {loader_list}; do\n"
        + "        search --no-floppy --set=root --file $loader\n"
        + "        if [ $? -eq 0 ]; then\n"
        + "            chainloader $loader\n"
        + "            boot\n"
        + "        fi\n"
        + "    done\n"
        + "    echo 'No EFI loader on the local disks: on to the next boot option of the firmware'\n"
        + "    exit 1\n"
        + "}\n"
    )


def render_grub_bootstrap() -> str:
    return BOOTSTRAP


def grub_word(word: str) -> str:
    """``word`` as one GRUB argument that reaches the kernel unchanged (no ``$`` expansion, no splitting)."""
    if _PLAIN_WORD.fullmatch(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def _location(path: str, server: BootServer) -> str:
    if server.kernels_over_http:
        return f"(http,{server.rack_address}:{server.http_port})/{path}"
    return f"(tftp,{server.rack_address})/{path}"
