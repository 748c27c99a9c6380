"""Simulated BMCs for the fleet: one Redfish ComputerSystem per virtual machine, all served by one HTTP server.

Each machine is ``/redfish/v1/Systems/<boot MAC without colons>`` with the part of Redfish that rack-power's
driver uses (and sushy-tools serves): GET (``PowerState``, ``Boot``), PATCH ``Boot`` (the one-time PXE
override), POST ``Actions/ComputerSystem.Reset`` (On, ForceOn, ForceOff, GracefulShutdown, ForceRestart,
GracefulRestart, PowerCycle). Basic authentication, one username and password for all.

Powering a machine on starts its boot as a task: with the PXE override set (it is used up), a fresh
:class:`VirtualMachine` boots from the network (DHCP, TFTP, HTTP, metadata, results); without it, the machine
"boots its disk" and just stays on. The power state is On while that task runs, as ipmi_sim reports a VM On while
its qemu lives; ForceOff cancels it; a commissioning environment that finishes powers itself off.

The server listens inside the machines' namespace on an address of their network, so the rack reaches it the way
it reaches a BMC network: over its interface on that subnet.
"""

import asyncio
import base64
import contextlib
import hmac
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Any

from aiohttp import web

from metalbus.contracts.machines import PowerType
from metalbus.fleet.enrolment import MachinePower
from metalbus.fleet.machine import MachineOptions, MachineOutcome, MachineResult, VirtualMachine
from metalbus.fleet.network import FleetNetwork
from metalbus.fleet.profiles import MachineProfile

SYSTEMS = "/redfish/v1/Systems"
ON_RESETS = frozenset({"On", "ForceOn"})
OFF_RESETS = frozenset({"ForceOff", "GracefulShutdown", "PushPowerButton"})
RESTART_RESETS = frozenset({"ForceRestart", "GracefulRestart", "PowerCycle"})
LISTEN_BACKLOG = 1024


def system_key(profile: MachineProfile) -> str:
    return profile.boot_mac.replace(":", "").lower()


@dataclass
class SimulatedSystem:
    """One machine's BMC state."""

    profile: MachineProfile
    pxe_once: bool = False
    boot: asyncio.Task[MachineOutcome | None] | None = None
    machine: VirtualMachine | None = None
    """The machine of the latest network boot (its outcome says how far it got)."""
    outcomes: list[MachineOutcome] = field(default_factory=list)
    """Every network boot's outcome, in order."""
    power_ons: int = 0
    disk_boots: int = 0

    @property
    def powered(self) -> bool:
        return self.boot is not None and not self.boot.done()


@dataclass(frozen=True)
class BmcCredentials:
    username: str
    password: str = field(repr=False)


class SimulatedBmcs:
    """The BMCs of a fleet; ``start`` serves them, ``power_parameters`` is what a machine is created with."""

    def __init__(
        self,
        profiles: Sequence[MachineProfile],
        network: FleetNetwork,
        options: MachineOptions,
        credentials: BmcCredentials,
        *,
        on_outcome: Callable[[MachineOutcome], None] | None = None,
    ) -> None:
        self.systems = {system_key(profile): SimulatedSystem(profile) for profile in profiles}
        self._network = network
        self._options = options
        self._credentials = credentials
        self._on_outcome = on_outcome
        self._expected_authorization = (
            "Basic " + base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
        )
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()
        self.address = ""
        self.port = 0
        self.refused_requests = 0

    # -- what machines are created with ---------------------------------------------------------------------------

    def power_parameters(self, profile: MachineProfile) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "scheme": "http",
            "username": self._credentials.username,
            "auth": "basic",
            "system_id": system_key(profile),
        }

    def power_secrets(self) -> dict[str, str]:
        return {"password": self._credentials.password}

    def machine_power(self, profile: MachineProfile) -> MachinePower:
        """Power type, parameters and secrets to create ``profile``'s machine with."""
        return MachinePower(PowerType.REDFISH, self.power_parameters(profile), self.power_secrets())

    # -- serving --------------------------------------------------------------------------------------------------

    async def start(self, interface_address: IPv4Interface, port: int = 0) -> None:
        """Serve on ``interface_address`` (``10.99.0.3/24``: put on the machines' interface, its network routed
        there) inside the machines' namespace."""
        namespace, address = self._network.namespace, str(interface_address.ip)
        await namespace.add_address(self._network.interface, address, route_to=str(interface_address.network))
        listener = namespace.open_socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(LISTEN_BACKLOG)
        self.address, self.port = address, listener.getsockname()[1]
        app = web.Application(middlewares=[self._authenticate])
        app.router.add_get(SYSTEMS, self._list_systems)
        app.router.add_get(SYSTEMS + "/{key}", self._get_system)
        app.router.add_patch(SYSTEMS + "/{key}", self._patch_system)
        app.router.add_post(SYSTEMS + "/{key}/Actions/ComputerSystem.Reset", self._reset_system)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, listener).start()

    async def close(self) -> None:
        """Power every machine off and stop serving; the BMC address leaves the interface."""
        for system in self.systems.values():
            await self._power_off(system)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.address:
            with contextlib.suppress(Exception):
                await self._network.namespace.remove_address(self._network.interface, self.address)

    def latest_outcome(self, profile: MachineProfile) -> MachineOutcome:
        """The machine's latest network boot into commissioning: still under way (stuck in its current step),
        ended, or none at all (stuck "never powered on"). Boots the region sent to the local disk (a power-on
        after commissioning ended) are passed over while there is a commissioning one to show."""
        system = self.systems[system_key(profile)]
        boots = [*system.outcomes]
        running = system.machine.outcome if system.powered and system.machine is not None else None
        if running is not None and all(outcome is not running for outcome in boots):
            boots.append(running)
        commissioning = [outcome for outcome in boots if outcome.result is not MachineResult.DISK]
        if commissioning or boots:
            return (commissioning or boots)[-1]
        return MachineOutcome(profile, MachineResult.STUCK, step="never powered on")

    def disk_boots(self) -> int:
        """Power-ons that ended on the local disk (no network boot asked for, or the region sent it there)."""
        return sum(system.disk_boots for system in self.systems.values())

    async def wait_until_every_machine_booted(self, timeout_s: float) -> bool:
        """True once every machine has finished at least one network boot (and none is still on, except on its
        local disk), within the timeout; False when the time ran out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not all(_settled(system) for system in self.systems.values()):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    # -- Redfish --------------------------------------------------------------------------------------------------

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        offered = request.headers.get("Authorization", "")
        if not hmac.compare_digest(offered.encode(), self._expected_authorization.encode()):
            self.refused_requests += 1
            return _error(401, "Base.1.0.GeneralError", "authentication required")
        response: web.StreamResponse = await handler(request)
        return response

    async def _list_systems(self, _: web.Request) -> web.Response:
        members = [{"@odata.id": f"{SYSTEMS}/{key}"} for key in self.systems]
        return web.json_response({"Members": members, "Members@odata.count": len(members)})

    async def _get_system(self, request: web.Request) -> web.Response:
        system = self._system(request)
        override = "Pxe" if system.pxe_once else "None"
        return web.json_response(
            {
                "@odata.id": f"{SYSTEMS}/{request.match_info['key']}",
                "Id": request.match_info["key"],
                "Name": system.profile.hostname,
                "PowerState": "On" if system.powered else "Off",
                "Boot": {"BootSourceOverrideTarget": override, "BootSourceOverrideEnabled": "Once"},
            }
        )

    async def _patch_system(self, request: web.Request) -> web.Response:
        system = self._system(request)
        boot = (await _json_body(request)).get("Boot")
        if not isinstance(boot, dict):
            return _error(400, "Base.1.0.PropertyMissing", "only Boot can be changed")
        target = boot.get("BootSourceOverrideTarget")
        if target not in ("Pxe", "None", "Hdd"):
            return _error(400, "Base.1.0.PropertyValueNotInList", f"BootSourceOverrideTarget {target!r}")
        system.pxe_once = target == "Pxe"
        return web.Response(status=204)

    async def _reset_system(self, request: web.Request) -> web.Response:
        system = self._system(request)
        reset_type = (await _json_body(request)).get("ResetType")
        if reset_type in ON_RESETS:
            if not system.powered:
                self._power_on(system)
        elif reset_type in OFF_RESETS:
            await self._power_off(system)
        elif reset_type in RESTART_RESETS:
            await self._power_off(system)
            self._power_on(system)
        else:
            return _error(400, "Base.1.0.ActionParameterNotSupported", f"ResetType {reset_type!r}")
        return web.Response(status=204)

    def _system(self, request: web.Request) -> SimulatedSystem:
        system = self.systems.get(request.match_info["key"].lower())
        if system is None:
            raise web.HTTPNotFound(text='{"error": {"message": "no such system"}}', content_type="application/json")
        return system

    # -- power ----------------------------------------------------------------------------------------------------

    def _power_on(self, system: SimulatedSystem) -> None:
        system.power_ons += 1
        from_network, system.pxe_once = system.pxe_once, False
        system.boot = asyncio.create_task(self._network_boot(system) if from_network else self._disk_boot(system))
        self._changed.set()

    async def _power_off(self, system: SimulatedSystem) -> None:
        if system.boot is not None and not system.boot.done():
            system.boot.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await system.boot
        self._changed.set()

    async def _network_boot(self, system: SimulatedSystem) -> MachineOutcome:
        machine = system.machine = VirtualMachine(system.profile, self._network, self._options)
        try:
            outcome = await machine.power_on()
        except asyncio.CancelledError:
            outcome = machine.outcome  # powered off mid-boot: stuck where it was
            system.outcomes.append(outcome)
            raise
        system.outcomes.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)
        self._changed.set()
        if outcome.result is MachineResult.DISK:
            await self._disk_boot(system)  # sent to its disk by the region: runs its installed system
        return outcome

    async def _disk_boot(self, system: SimulatedSystem) -> None:
        """No network boot was asked for: the machine runs its installed system until it is powered off."""
        system.disk_boots += 1
        await asyncio.Event().wait()


def _settled(system: SimulatedSystem) -> bool:
    """Booted from the network at least once, and now off or running its local disk."""
    if not system.outcomes:
        return False
    return not system.powered or system.outcomes[-1].result is MachineResult.DISK


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)
