"""Render a boot decision as an iPXE script, and the iPXE bootstrap script: pure text, no I/O.

Kernel and initrd are fetched over HTTP from the rack (``tftp://`` when ``kernels_over_http`` is off). The
initrd is named (``initrd --name initrd.img``) and the kernel told ``initrd=initrd.img``, which EFI-stub kernels
need under iPXE's EFI build and BIOS kernels ignore.

"Boot the local disk":

- BIOS (``pcbios``): ``sanboot --no-describe --drive 0x80`` boots the first disk through INT 13h, as MAAS's
  ``ipxe/config.local.template`` does; if that fails, ``exit 1``.
- EFI: iPXE cannot boot a disk itself there (``sanboot`` drive numbers are a BIOS notion), so it exits and the
  firmware boots its next option. It must be ``exit 1``, never a bare ``exit``/``exit 0``: EFI firmware advances
  to the next boot option only when an option *fails*; a success status ends the boot loop and drops many
  machines (Dell PowerEdge, Lenovo XCC, OVMF) into the boot manager menu. This is the fix Tinkerbell made
  (tinkerbell/tinkerbell PR 984, "Return non-zero status to UEFI"), and warewulf (PR 106), Foreman (PR 8373) and
  netboot.xyz (issue 1276) before it.

The bootstrap is what rack-dhcp hands out (``http://<rack>:5248/ipxe.cfg-${mac}``): the region needs the
architecture, which the URL lacks, so the bootstrap chains to ``ipxe.cfg-<mac>-${buildarch}-${platform}``
(iPXE fills both in); if that fails (the region did not answer) it boots the local disk as above.
"""

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus_rack_tftp.boot_paths import BootServer, bootif_parameter

INITRD_NAME = "initrd.img"
BIOS_LOCAL_BOOT = "sanboot --no-describe --drive 0x80 ||\nexit 1\n"
EFI_LOCAL_BOOT = "exit 1\n"


def render_ipxe_config(config: BootConfig, *, mac: str, architecture: Architecture, server: BootServer) -> str:
    """The whole script for ``mac`` booting on ``architecture``."""
    if config.kernel is None or config.initrd is None:
        return render_ipxe_local_boot(architecture)
    words = [f"initrd={INITRD_NAME}", config.kernel_command_line, bootif_parameter(mac)]
    return (
        "#!ipxe\n"
        f"echo Booting under metalbus direction: {config.purpose.value}...\n"
        f"kernel {_location(config.kernel, server)} {' '.join(word for word in words if word)}\n"
        f"initrd --name {INITRD_NAME} {_location(config.initrd, server)}\n"
        "boot ||\n"
        "echo metalbus: the boot failed: on to the next boot option of the firmware\n"
        f"{_local_boot_commands(architecture)}"
    )


def render_ipxe_local_boot(architecture: Architecture) -> str:
    return f"#!ipxe\necho Booting the local disk under metalbus direction...\n{_local_boot_commands(architecture)}"


def render_ipxe_bootstrap(*, mac: str | None, server: BootServer) -> str:
    """Chain to this machine's own script, named with its architecture; the local disk if that fails."""
    name = f"ipxe.cfg-{mac or '${mac}'}-${{buildarch}}-${{platform}}"
    return (
        "#!ipxe\n"
        f"chain {server.http_url(name)} ||\n"
        "echo metalbus: no boot config for ${mac}: booting the local disk\n"
        f"iseq ${{platform}} pcbios && {BIOS_LOCAL_BOOT}"
    )


def _local_boot_commands(architecture: Architecture) -> str:
    return BIOS_LOCAL_BOOT if architecture is Architecture.AMD64_BIOS else EFI_LOCAL_BOOT


def _location(path: str, server: BootServer) -> str:
    if server.kernels_over_http:
        return server.http_url(path)
    return f"tftp://{server.rack_address}/{path}"
