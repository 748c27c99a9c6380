"""Render the kernel command line of a boot config: the resource's own parameters, then metalbus's (pure).

What a booting machine finds on its command line (``/proc/cmdline``), after the boot resource's parameters:

- ``metalbus.purpose``       ``commissioning`` or ``enlistment``: what the ephemeral environment is there to do.
- ``metalbus.system_id``     the machine's system id (an enlisted machine learns the id it was given).
- ``metalbus.metadata_url``  the metadata service on the rack the machine reached:
  ``http://<rack>:5248/MAAS/metadata/`` (commissioning) or ``…/MAAS/metadata/enlist/`` (anonymous enlistment).
  The commissioning runner (``commissioning_script.sh``) posts its results there.
- ``metalbus.consumer_key``, ``metalbus.token_key``, ``metalbus.token_secret``  the machine's own OAuth 1.0a
  PLAINTEXT credentials (commissioning only).
- ``metalbus.syslog``        ``<rack>:<port>``: the rack's syslog relay, where the ephemeral environment sends its
  kernel's and its own log lines (left out when the rack relays none).

MAAS hands the same facts over indirectly (a ``cloud-config-url`` whose preseed carries the credentials); named
parameters need no extra round trip: the ephemeral image reads them from /proc/cmdline, and writes them into
cloud-init's MAAS datasource settings (``metadata_url``, ``consumer_key``, ``token_key``, ``token_secret``) if it
runs cloud-init.

Rules, so that every bootloader (pxelinux ``APPEND``, GRUB ``linux``, iPXE ``kernel``) passes the line on
unchanged: parameters are separated by one space; the resource's parameters come first, split the way the
kernel splits them (whitespace outside double quotes), and keep their order and quoting; a resource parameter
with the name of one of ours is dropped, so ours are never shadowed; our values contain no whitespace, quotes,
backslashes, GRUB metacharacters or wildcards (our URLs and url-safe tokens never do), and the whole line fits the
kernel's 2048-byte limit.
"""

import re
from collections.abc import Sequence
from ipaddress import IPv4Address

from metalbus.contracts.boot import RACK_HTTP_PORT
from metalbus.contracts.machines import BootPurpose
from metalbus.contracts.metadata import OAuthCredentials

# x86's COMMAND_LINE_SIZE counts the terminating NUL.
MAX_COMMAND_LINE = 2047
METADATA_PORT = RACK_HTTP_PORT
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# The URL characters no bootloader splits on or expands: GRUB's metacharacters ({ } | & $ ; < > and
# whitespace), its wildcards (* ? [ ]), comments (#), quotes and backslashes are all left out.
_VALUE = re.compile(r"[A-Za-z0-9._~:/@+,=%-]+")

Parameter = tuple[str, str]


class KernelCommandLineError(ValueError):
    """Parameters that cannot be put on a kernel command line as given."""


def split_kernel_parameters(text: str) -> list[str]:
    """Split parameters as the kernel does: whitespace separates, double quotes group (and are kept)."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char.isspace() and not quoted:
            if current:
                words.append("".join(current))
                current = []
            continue
        if not char.isprintable():
            raise KernelCommandLineError(f"control character {char!r} in kernel parameters")
        current.append(char)
    if quoted:
        raise KernelCommandLineError(f"unbalanced double quote in kernel parameters: {text!r}")
    if current:
        words.append("".join(current))
    return words


def parameter_name(word: str) -> str:
    return word.split("=", 1)[0].strip('"')


def render_kernel_command_line(base: str, parameters: Sequence[Parameter]) -> str:
    """``base`` (a boot resource's parameters) followed by ``parameters`` as ``name=value`` words."""
    names = [name for name, _ in parameters]
    if len(set(names)) != len(names):
        raise KernelCommandLineError(f"a parameter is given twice: {names}")
    for name, value in parameters:
        if not _NAME.fullmatch(name):
            raise KernelCommandLineError(f"not a kernel parameter name: {name!r}")
        if not _VALUE.fullmatch(value):
            raise KernelCommandLineError(f"value of {name} cannot go on a kernel command line: {value!r}")
    ours = set(names)
    kept = [word for word in split_kernel_parameters(base) if parameter_name(word) not in ours]
    line = " ".join([*kept, *(f"{name}={value}" for name, value in parameters)])
    if len(line) > MAX_COMMAND_LINE:
        raise KernelCommandLineError(f"kernel command line is {len(line)} bytes, the limit is {MAX_COMMAND_LINE}")
    return line


def metadata_url(rack_address: IPv4Address, port: int = METADATA_PORT) -> str:
    """Where a commissioning machine reads its metadata: the rack's proxy to the region, on the rack's HTTP port."""
    return f"http://{rack_address}:{port}/MAAS/metadata/"


def enlistment_url(rack_address: IPv4Address, port: int = METADATA_PORT) -> str:
    """The anonymous metadata tree an enlisting machine reads (it has no credentials yet)."""
    return f"{metadata_url(rack_address, port)}enlist/"


def syslog_parameters(rack_address: IPv4Address, syslog_port: int | None) -> list[Parameter]:
    return [] if syslog_port is None else [("metalbus.syslog", f"{rack_address}:{syslog_port}")]


def commissioning_parameters(
    rack_address: IPv4Address,
    system_id: str,
    credentials: OAuthCredentials,
    port: int = METADATA_PORT,
    *,
    syslog_port: int | None = None,
) -> list[Parameter]:
    return [
        ("metalbus.purpose", BootPurpose.COMMISSIONING.value),
        ("metalbus.system_id", system_id),
        ("metalbus.metadata_url", metadata_url(rack_address, port)),
        ("metalbus.consumer_key", credentials.consumer_key),
        ("metalbus.token_key", credentials.token_key),
        ("metalbus.token_secret", credentials.token_secret),
        *syslog_parameters(rack_address, syslog_port),
    ]


def enlistment_parameters(
    rack_address: IPv4Address, system_id: str, port: int = METADATA_PORT, *, syslog_port: int | None = None
) -> list[Parameter]:
    return [
        ("metalbus.purpose", BootPurpose.ENLISTMENT.value),
        ("metalbus.system_id", system_id),
        ("metalbus.metadata_url", enlistment_url(rack_address, port)),
        *syslog_parameters(rack_address, syslog_port),
    ]
