"""The file source of per-machine boot configs: requested name → region's decision (cached) → rendered text.

Put first in the servers' ``FirstThatServes`` chain, before the static boot root: a path that is not a boot
config name (``boot_paths``) is ``NOT_FOUND`` here, so the boot root gets it. The same source answers TFTP and
HTTP (iPXE's scripts come over HTTP, pxelinux's and GRUB's configs over TFTP, and either works for each).

The rack address written into a config (HTTP URLs, the region's metadata URL) is the address the machine
reached (``Requester.local_address``); a server bound to the wildcard address that cannot tell it falls back to
``rack_address`` given here. A region answer that cannot be written into a loader's config safely (a path with
spaces or quotes, a control character on the command line) is refused as UNAVAILABLE, never rendered.
"""

from ipaddress import AddressValueError, IPv4Address
from typing import Protocol

import structlog

from metalbus.contracts.boot import RACK_HTTP_PORT, BootConfig, relative_boot_path
from metalbus.contracts.common import Architecture
from metalbus_rack_tftp.boot_paths import (
    BootConfigPath,
    BootServer,
    BootstrapPath,
    Loader,
    LocalFallbackPath,
    MachineConfigPath,
    parse_boot_config_path,
)
from metalbus_rack_tftp.render_grub import render_grub_bootstrap, render_grub_config
from metalbus_rack_tftp.render_ipxe import render_ipxe_bootstrap, render_ipxe_config
from metalbus_rack_tftp.render_pxelinux import render_pxelinux_config, render_pxelinux_local_boot
from metalbus_rack_tftp.sources import FileRefused, MemoryFile, OpenedFile, RefusalReason, Requester

log = structlog.get_logger("metalbus.rack_tftp.boot_configs")


class BootDecisions(Protocol):
    """What a MAC boots (``BootConfigCache`` in service, a fake in tests); raises ``FileRefused``."""

    async def boot_config(self, mac: str, architecture: Architecture, rack_address: IPv4Address) -> BootConfig: ...


class DynamicBootFiles:
    """``FileSource`` of pxelinux, GRUB and iPXE configs rendered from the region's boot decisions."""

    def __init__(
        self,
        decisions: BootDecisions,
        *,
        http_port: int = RACK_HTTP_PORT,
        kernels_over_http: bool = True,
        rack_address: IPv4Address | None = None,
    ) -> None:
        self.decisions = decisions
        self.http_port = http_port
        self.kernels_over_http = kernels_over_http
        self.rack_address = rack_address

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        target = parse_boot_config_path(path)
        if target is None:
            raise FileRefused(RefusalReason.NOT_FOUND, f"not a boot config name: {path}")
        server = BootServer(self._rack_address(requester), self.http_port, self.kernels_over_http)
        text = await self._render(target, server, requester)
        return MemoryFile(text.encode())

    async def _render(self, target: BootConfigPath, server: BootServer, requester: Requester) -> str:
        if isinstance(target, LocalFallbackPath):
            return render_pxelinux_local_boot()
        if isinstance(target, BootstrapPath):
            if target.loader is Loader.IPXE:
                return render_ipxe_bootstrap(mac=target.mac, server=server)
            return render_grub_bootstrap()
        config = _checked(await self.decisions.boot_config(target.mac, target.architecture, server.rack_address))
        log.info(
            "boot_config.served",
            loader=target.loader.value,
            mac=target.mac,
            architecture=target.architecture.value,
            system_id=config.system_id,
            purpose=config.purpose.value,
            client=requester.client_address,
            protocol=requester.protocol,
        )
        return _render_machine_config(target, config, server)

    def _rack_address(self, requester: Requester) -> IPv4Address:
        try:
            address = IPv4Address(requester.local_address)
        except AddressValueError:
            address = None
        if address is not None and not address.is_unspecified:
            return address
        if self.rack_address is not None:
            return self.rack_address
        raise FileRefused(
            RefusalReason.UNAVAILABLE,
            f"cannot tell which rack address {requester.client_address} reached ({requester.local_address!r})",
        )


def _render_machine_config(target: MachineConfigPath, config: BootConfig, server: BootServer) -> str:
    if target.loader is Loader.PXELINUX:
        return render_pxelinux_config(config, mac=target.mac, server=server)
    if target.loader is Loader.GRUB:
        return render_grub_config(config, mac=target.mac, architecture=target.architecture, server=server)
    return render_ipxe_config(config, mac=target.mac, architecture=target.architecture, server=server)


def _checked(config: BootConfig) -> BootConfig:
    """The region's answer, if every path is a plain relative path and the command line is one printable line."""
    try:
        for path in (config.kernel, config.initrd, config.squashfs):
            if path is not None:
                relative_boot_path(path)
    except ValueError as error:
        raise FileRefused(RefusalReason.UNAVAILABLE, f"unusable boot decision: {error}") from error
    if not config.kernel_command_line.isprintable():
        raise FileRefused(RefusalReason.UNAVAILABLE, "unusable boot decision: control character on the command line")
    return config
