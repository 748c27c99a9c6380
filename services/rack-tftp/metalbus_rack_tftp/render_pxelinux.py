"""Render a boot decision as a pxelinux config (``pxelinux.cfg/01-<mac>``): pure text, no I/O.

lpxelinux (the loader rack-dhcp hands BIOS machines) fetches ``http://`` paths itself, so with
``kernels_over_http`` the kernel and initrd come from the rack's HTTP boot server (port 5248, much faster than
TFTP for a 100 MB initrd); without it they are plain paths relative to the boot root, fetched over TFTP from
the server pxelinux came from. "Boot the local disk" is ``LOCALBOOT 0``: pxelinux returns to the BIOS, which
boots the first disk (MAAS's local template does the same). The command line is the region's, unchanged, plus
``BOOTIF=01-<mac>`` (what ``IPAPPEND 2`` would add) so the initramfs knows which NIC booted.
"""

from metalbus.contracts.boot import BootConfig
from metalbus_rack_tftp.boot_paths import BootServer, bootif_parameter

LOCAL_BOOT = """\
DEFAULT local
PROMPT 0

LABEL local
  SAY Booting the local disk under metalbus direction...
  LOCALBOOT 0
"""


def render_pxelinux_config(config: BootConfig, *, mac: str, server: BootServer) -> str:
    """The whole config file for ``mac``: one label, chosen at once (no prompt, no menu)."""
    if config.kernel is None or config.initrd is None:
        return LOCAL_BOOT
    command_line = " ".join(part for part in (config.kernel_command_line, bootif_parameter(mac)) if part)
    return (
        "DEFAULT metalbus\n"
        "PROMPT 0\n"
        "\n"
        "LABEL metalbus\n"
        f"  SAY Booting under metalbus direction: {config.purpose.value}...\n"
        f"  KERNEL {_location(config.kernel, server)}\n"
        f"  INITRD {_location(config.initrd, server)}\n"
        f"  APPEND {command_line}\n"
    )


def render_pxelinux_local_boot() -> str:
    """What ``pxelinux.cfg/default`` serves: no per-machine answer, so the BIOS's next boot device."""
    return LOCAL_BOOT


def _location(path: str, server: BootServer) -> str:
    return server.http_url(path) if server.kernels_over_http else path
