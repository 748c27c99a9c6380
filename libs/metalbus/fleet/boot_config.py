"""Read what a boot config tells a machine (pure): kernel and initrd locations, the kernel command line, and from
that line the metadata URL and OAuth credentials, the way the ephemeral environment's /init reads /proc/cmdline.

pxelinux configs (``pxelinux.cfg/01-<mac>``): the ``KERNEL``, ``INITRD`` and ``APPEND`` lines of the default label
(keywords in any case). GRUB configs (``grub.cfg-<mac>-x86_64``): the first menu entry's ``linux <kernel> <args…>``
and ``initrd <initrd>`` lines, with GRUB's ``(http,<host>:<port>)/path`` devices turned into URLs and single
quotes taken off. A config that boots the local disk (no kernel) is a ``LocalBoot`` error: the region did not
send this machine to commissioning (or no longer: it is done with it).
"""

import re
import shlex
from dataclasses import dataclass, field


class BootConfigError(ValueError):
    """The config names no kernel to boot, or the command line lacks what commissioning needs."""


class LocalBoot(BootConfigError):
    """The config boots the local disk: no kernel from the network."""


@dataclass(frozen=True)
class BootInstructions:
    kernel: str
    initrd: str
    command_line: str


@dataclass(frozen=True)
class MetadataAccess:
    """Where the machine reads its metadata and posts its results, and as whom (OAuth 1.0a PLAINTEXT)."""

    url: str
    consumer_key: str
    token_key: str
    token_secret: str = field(repr=False)
    system_id: str | None = None


_GRUB_DEVICE = re.compile(r"^\((https?),([^)]+)\)(/.*)$")


def parse_pxelinux_config(text: str) -> BootInstructions:
    found: dict[str, str] = {}
    for line in text.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword.upper() in ("KERNEL", "LINUX", "INITRD", "APPEND") and keyword.upper() not in found:
            found[keyword.upper()] = value.strip()
    kernel = found.get("KERNEL") or found.get("LINUX")
    if not kernel or "INITRD" not in found:
        raise LocalBoot("the pxelinux config boots no kernel (local boot)")
    return BootInstructions(kernel, found["INITRD"], found.get("APPEND", ""))


def parse_grub_config(text: str) -> BootInstructions:
    kernel_line = initrd_line = None
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if words and words[0] in ("linux", "linuxefi") and kernel_line is None:
            kernel_line = words[1] if len(words) > 1 else ""
        elif words and words[0] in ("initrd", "initrdefi") and initrd_line is None:
            initrd_line = words[1] if len(words) > 1 else ""
    if not kernel_line or not initrd_line:
        raise LocalBoot("the GRUB config boots no kernel (local boot)")
    kernel, *arguments = shlex.split(kernel_line)
    return BootInstructions(grub_location(kernel), grub_location(initrd_line.split()[0]), " ".join(arguments))


def grub_location(path: str) -> str:
    """``(http,10.0.0.2:5248)/images/x`` → ``http://10.0.0.2:5248/images/x``; anything else as it is."""
    match = _GRUB_DEVICE.match(path)
    return f"{match.group(1)}://{match.group(2)}{match.group(3)}" if match else path


def kernel_parameters(command_line: str) -> dict[str, str]:
    """``name=value`` words of the line (the first of each name wins, as /init's loop does); bare words map to ''."""
    parameters: dict[str, str] = {}
    for word in command_line.split():
        name, _, value = word.partition("=")
        parameters.setdefault(name, value)
    return parameters


def metadata_access(command_line: str) -> MetadataAccess:
    parameters = kernel_parameters(command_line)
    names = ("metalbus.metadata_url", "metalbus.consumer_key", "metalbus.token_key", "metalbus.token_secret")
    missing = [name for name in names if not parameters.get(name)]
    if missing:
        raise BootConfigError(f"no {', '.join(missing)} on the kernel command line")
    url, consumer_key, token_key, token_secret = (parameters[name] for name in names)
    return MetadataAccess(url, consumer_key, token_key, token_secret, parameters.get("metalbus.system_id"))
