"""One virtual machine's life from power-on to power-off, each step timed, over the real protocols.

Power on → DHCP (DORA with option 93: 0 for BIOS, 7 for EFI) → TFTP (the boot file the lease names, then the
loader's config: ``pxelinux.cfg/01-<mac>`` for BIOS, ``grub.cfg-<mac>-x86_64`` for EFI) → HTTP (kernel and initrd)
→ metadata (user-data with the OAuth credentials of the kernel command line) → results (the inventory, posted as
``metalbus-inventory``) → signal (OK) → power off, after ``stay_on_s`` (0 by default, as the commissioning
environment powers off at once). Syslog lines go to the rack on the way, as the ephemeral environment's syslogd
forwards them. While the machine is on, its lease is renewed at T1. ``power_on`` returns the outcome: the step
that failed (or was under way when the run was stopped: ``stuck``), the seconds each step took, and what the
machine reported.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address
from typing import TypeVar
from urllib.parse import urlsplit
from uuid import UUID

from metalbus.contracts.common import Architecture
from metalbus.contracts.metadata import HardwareInventory
from metalbus.fleet.boot_config import (
    BootConfigError,
    BootInstructions,
    LocalBoot,
    metadata_access,
    parse_grub_config,
    parse_pxelinux_config,
)
from metalbus.fleet.commissioning import MetadataClient, MetadataRefused
from metalbus.fleet.dhcp_client import (
    PXE_ARCHITECTURE_BIOS,
    PXE_ARCHITECTURE_EFI_X64,
    DhcpClient,
    DhcpError,
    DhcpState,
    Lease,
    Outgoing,
    RetransmitPolicy,
)
from metalbus.fleet.http_fetch import HttpError, http_request
from metalbus.fleet.network import FleetNetwork
from metalbus.fleet.packet_transport import ReceivedReply
from metalbus.fleet.profiles import MachineProfile
from metalbus.fleet.syslog_sender import SyslogSender
from metalbus.fleet.tftp_fetch import PXELINUX_TFTP_TIMEOUTS_S, tftp_fetch

T = TypeVar("T")
FINAL_FAILURES = (MetadataRefused, BootConfigError)
"""What ends the machine's run instead of a new network boot (a local boot is handled before these)."""
STEPS = ("dhcp", "tftp", "http", "metadata", "results", "signal")
MAX_DHCP_EVENTS = 1000


class MachineResult(StrEnum):
    READY = "ready"
    """Every step done: the region has the inventory and the final OK."""
    FAILED = "failed"
    STUCK = "stuck"
    """Still in a step when the run's deadline came."""
    DISK = "disk"
    """The region sent the network boot to the local disk (the machine was not commissioning): it runs its
    installed system. A power-on the region did not mean as commissioning, not a failure of the machine."""


@dataclass(frozen=True)
class MachineOptions:
    dhcp_policy: RetransmitPolicy = field(default_factory=RetransmitPolicy)
    tftp_timeouts_s: tuple[float, ...] = PXELINUX_TFTP_TIMEOUTS_S
    """Seconds to wait for the server before each resend, then before giving up."""
    http_timeout_s: float = 30.0
    metadata_retry_scale: float = 1.0
    stay_on_s: float = 0.0
    """Seconds the machine stays on after its final signal (renewing its lease at T1) before it powers off."""
    firmware_s: float = 0.0
    """Seconds of power-on self test before the firmware's first DHCPDISCOVER (real servers take 10 s to minutes)."""
    boot_attempts: int = 1
    """Network boots tried from DHCP on before the machine gives up: server firmware set to retry PXE boots again
    after a failed one, and an ephemeral environment that reboots when its metadata service never answers, as the
    image's /init does (a rack that died mid-boot: the next DISCOVER is answered by another rack on the subnet).
    A refusal (4xx) or a boot config without metadata is final, as in the image."""


@dataclass
class MachineOutcome:
    profile: MachineProfile
    result: MachineResult = MachineResult.STUCK
    step: str = "off"
    """The step under way, or the one that failed; "off" once powered off after success."""
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    address: IPv4Address | None = None
    dhcp_server: IPv4Address | None = None
    """The server identifier of the lease booted from (which rack answered)."""
    bytes_fetched: int = 0
    syslog_lines: int = 0
    dhcp_sends: int = 0
    renewals: int = 0
    reported: HardwareInventory | None = None
    failed_boots: list[str] = field(default_factory=list)
    """Why each earlier network boot of this power-on failed (the last one's reason is ``error``)."""
    booted_disk: bool = False
    """The final signal's answer was lost, and the next network boot was sent to the local disk: the region had it."""


class VirtualMachine:
    """A machine that boots from the network when powered on (``power_on``, the entry point a power driver calls)."""

    def __init__(self, profile: MachineProfile, network: FleetNetwork, options: MachineOptions) -> None:
        self.profile = profile
        self.network = network
        self.options = options
        self.outcome = MachineOutcome(profile)
        self.dhcp = DhcpClient(
            profile.boot_mac,
            pxe_architecture=_pxe_architecture(profile.architecture),
            policy=options.dhcp_policy,
            chance=random.Random(f"dhcp:{profile.boot_mac}"),
            machine_id=UUID(int=int(profile.boot_mac.replace(":", ""), 16)),
            broadcast_flag=profile.index % 2 == 1,  # half the firmware asks for broadcast replies, half does not
        )
        self._server_mac: bytes | None = None
        self._signal_sent = False
        self._syslog: SyslogSender | None = None

    async def power_on(self) -> MachineOutcome:
        """Boot, commission, power off; the outcome says how far it got (also when cancelled: ``stuck``)."""
        mac = bytes.fromhex(self.profile.boot_mac.replace(":", ""))
        replies = self.network.transport.subscribe(mac)
        keeper: asyncio.Task[None] | None = None
        try:
            self.outcome.step = "firmware"
            await asyncio.sleep(self.options.firmware_s)
            for attempt in range(1, max(self.options.boot_attempts, 1) + 1):
                try:
                    lease = await self._timed("dhcp", self._lease(replies))
                    keeper = asyncio.create_task(self._keep_lease(replies))
                    await self._boot(lease)
                    break
                except LocalBoot:
                    if not self._signal_sent:
                        self.outcome.result, self.outcome.step = MachineResult.DISK, "disk"
                        return self.outcome
                    # An earlier boot sent the final signal and lost the answer (its rack died mid-request); the
                    # region, done with the machine, now sends it to its disk: commissioning ended there.
                    self.outcome.booted_disk = True
                    break
                except FINAL_FAILURES:
                    raise  # the environment powers off, as the ephemeral image does
                except Exception as error:  # the firmware boots from the network again (up to boot_attempts)
                    if attempt >= self.options.boot_attempts:
                        raise
                    self.outcome.failed_boots.append(f"{self.outcome.step}: {type(error).__name__}: {error}")
                    await self._stop_network_boot(keeper)
                    keeper, self.outcome.address = None, None
            self.outcome.result, self.outcome.step = MachineResult.READY, "on"
            await asyncio.sleep(self.options.stay_on_s)
            self.outcome.step = "off"
        except asyncio.CancelledError:
            if self.outcome.step != "on":  # a machine done and merely left on is still READY
                self.outcome.result = MachineResult.STUCK
            raise
        except Exception as error:  # noqa: BLE001 — every failure of a step is the machine's outcome, not the fleet's
            self.outcome.result, self.outcome.error = MachineResult.FAILED, f"{type(error).__name__}: {error}"
        finally:
            await self._power_off(mac, keeper)
        return self.outcome

    async def _boot(self, lease: Lease) -> None:
        address = lease.address
        self.outcome.address, self.outcome.dhcp_server = address, lease.server
        await self.network.take_address(address, lease.subnet_mask)
        self._log("metalbus-ephemeral", f"leased {address} from {lease.server}")
        instructions = await self._timed("tftp", self._boot_config(lease))
        await self._timed("http", self._fetch_images(instructions))
        access = metadata_access(instructions.command_line)
        client = MetadataClient(self.network.namespace, address, access, retry_scale=self.options.metadata_retry_scale)
        user_data = await self._timed("metadata", client.read_user_data())
        self._log("metalbus-ephemeral", f"user-data read from {access.url} ({len(user_data)} bytes)")
        started = time.monotonic()
        await self._timed("results", client.post_inventory(self.profile.inventory, time.monotonic() - started))
        self.outcome.reported = self.profile.inventory
        self._signal_sent = True
        await self._timed("signal", client.signal_ok())
        self._log("metalbus-ephemeral", "user-data exited with 0; powering off")

    async def _timed(self, step: str, work: Awaitable[T]) -> T:
        """Await ``work`` as step ``step`` (what a stuck or failed machine was doing), recording its seconds."""
        self.outcome.step = step
        started = time.monotonic()
        result = await work
        self.outcome.timings[step] = time.monotonic() - started
        return result

    # -- DHCP -----------------------------------------------------------------------------------------------------

    async def _lease(self, replies: asyncio.Queue[ReceivedReply]) -> Lease:
        now = time.monotonic
        outgoing: Outgoing | None = self.dhcp.start(now())
        for _ in range(MAX_DHCP_EVENTS):
            if outgoing is not None:
                self._transmit(outgoing)
            if self.dhcp.state is DhcpState.BOUND and self.dhcp.lease is not None:
                return self.dhcp.lease
            if self.dhcp.state is DhcpState.FAILED:
                raise DhcpError(f"no lease after {self.dhcp.sends} tries")
            outgoing = await self._next_dhcp_event(replies)
        raise DhcpError(f"no lease after {MAX_DHCP_EVENTS} DHCP events")

    async def _next_dhcp_event(self, replies: asyncio.Queue[ReceivedReply]) -> Outgoing | None:
        wait = self.dhcp.deadline - time.monotonic()
        try:
            reply = await asyncio.wait_for(replies.get(), None if wait == float("inf") else max(wait, 0))
        except TimeoutError:
            return self.dhcp.on_timeout(time.monotonic())
        self._server_mac = reply.server_mac
        return self.dhcp.on_message(reply.message, time.monotonic())

    def _transmit(self, outgoing: Outgoing) -> None:
        self.outcome.dhcp_sends += 1
        self.network.transport.send_dhcp(outgoing.message, server=outgoing.to_server, server_mac=self._server_mac)

    async def _keep_lease(self, replies: asyncio.Queue[ReceivedReply]) -> None:
        """Renew at T1 (rebind at T2) for as long as the machine is on; cancelled at power-off."""
        for _ in range(MAX_DHCP_EVENTS):
            before = self.dhcp.state
            outgoing = await self._next_dhcp_event(replies)
            if outgoing is not None:
                self._transmit(outgoing)
            if before is not DhcpState.BOUND and self.dhcp.state is DhcpState.BOUND:
                self.outcome.renewals += 1

    # -- TFTP and HTTP --------------------------------------------------------------------------------------------

    async def _boot_config(self, lease: Lease) -> BootInstructions:
        loader = await self._tftp(lease.next_server, lease.boot_file)
        self.outcome.bytes_fetched += len(loader)
        dashed = self.profile.boot_mac.replace(":", "-")
        if self.profile.architecture is Architecture.AMD64_BIOS:
            return parse_pxelinux_config((await self._tftp(lease.next_server, f"pxelinux.cfg/01-{dashed}")).decode())
        config = await self._tftp(lease.next_server, f"grub/grub.cfg-{self.profile.boot_mac}-x86_64")
        return parse_grub_config(config.decode())

    async def _tftp(self, server: IPv4Address, path: str) -> bytes:
        assert self.outcome.address is not None
        return await tftp_fetch(
            self.network.namespace,
            self.outcome.address,
            (server, self.network.tftp_port),
            path,
            timeouts_s=self.options.tftp_timeouts_s,
        )

    async def _fetch_images(self, instructions: BootInstructions) -> None:
        assert self.outcome.address is not None
        for location in (instructions.kernel, instructions.initrd):
            if urlsplit(location).scheme != "http":
                self.outcome.bytes_fetched += len(await self._tftp(self.dhcp_server, location))
                continue
            response = await http_request(
                self.network.namespace,
                self.outcome.address,
                "GET",
                location,
                timeout_s=self.options.http_timeout_s,
                keep_body=False,
            )
            if response.status != 200:
                raise HttpError(f"GET {location}: HTTP {response.status}")
            declared = response.headers.get("content-length")
            if declared is not None and declared != str(response.length):
                raise HttpError(f"GET {location}: {response.length} of {declared} bytes")
            self.outcome.bytes_fetched += response.length

    @property
    def dhcp_server(self) -> IPv4Address:
        if self.dhcp.lease is None:
            raise DhcpError("no lease")
        return self.dhcp.lease.next_server

    # -- syslog and power off -------------------------------------------------------------------------------------

    def _log(self, tag: str, message: str) -> None:
        port, address = self.network.syslog_port, self.outcome.address
        if port is None or address is None or self.dhcp.lease is None:
            return
        if self._syslog is None:
            destination = (self.dhcp.lease.server, port)
            self._syslog = SyslogSender(self.network.namespace, address, destination, self.profile.hostname)
        self._syslog.send(tag, message)
        self.outcome.syslog_lines = self._syslog.sent

    async def _power_off(self, mac: bytes, keeper: asyncio.Task[None] | None) -> None:
        await self._stop_network_boot(keeper)
        self.network.transport.unsubscribe(mac)

    async def _stop_network_boot(self, keeper: asyncio.Task[None] | None) -> None:
        """What a reset ends: lease renewals, the syslog sender, the address (the DHCP client starts afresh)."""
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
        if self.outcome.address is not None:
            await self.network.give_back(self.outcome.address)


def _pxe_architecture(architecture: Architecture) -> int:
    return PXE_ARCHITECTURE_BIOS if architecture is Architecture.AMD64_BIOS else PXE_ARCHITECTURE_EFI_X64
