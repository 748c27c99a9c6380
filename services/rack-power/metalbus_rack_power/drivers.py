"""The power driver interface, the registry of drivers by power type, and the one BMC a command addresses.

A driver is one module implementing :class:`PowerDriver` (MAAS keeps its power drivers the same way); the
registry maps each :class:`PowerType` to one instance. Drivers raise only the typed errors of
``metalbus.contracts.errors``: bad credentials are Forbidden, an unreachable or silent BMC Unavailable (the region
then tries another rack that reaches it), an operation the BMC or driver cannot do BadRequest. Secrets are held by
:class:`Bmc` outside its repr and never put in an error message or a log line.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from metalbus.contracts.errors import BadRequest
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import PowerState


@dataclass(frozen=True)
class Bmc:
    """The parameters and secrets of one BMC, as a command or a poll target carries them."""

    power_type: PowerType
    parameters: Mapping[str, Any]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        address = self.parameters.get("address")
        if not isinstance(address, str) or not address:
            raise BadRequest(f"{self.power_type.value} power parameters need an 'address'")
        return address

    @property
    def password(self) -> str:
        return self.secrets.get("password", "")

    def text(self, name: str, default: str | None = None) -> str:
        value = self.parameters.get(name, default)
        if not isinstance(value, str):
            raise BadRequest(f"{self.power_type.value} power parameter {name!r} must be text")
        return value

    def integer(self, name: str, default: int) -> int:
        value = self.parameters.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
            raise BadRequest(f"{self.power_type.value} power parameter {name!r} must be a whole number")
        return int(value)

    def flag(self, name: str, default: bool) -> bool:
        value = self.parameters.get(name, default)
        if not isinstance(value, bool):
            raise BadRequest(f"{self.power_type.value} power parameter {name!r} must be true or false")
        return value


class PowerDriver(Protocol):
    """Power one BMC. Each call returns once the BMC accepted (or answered) the request."""

    async def on(self, bmc: Bmc) -> None: ...

    async def off(self, bmc: Bmc) -> None: ...

    async def cycle(self, bmc: Bmc) -> None: ...

    async def query(self, bmc: Bmc) -> PowerState: ...

    async def set_boot_pxe(self, bmc: Bmc) -> None:
        """Make the next boot a network (PXE) boot, once."""
        ...


class DriverRegistry:
    """One driver per power type; adding a power type is registering one more driver."""

    def __init__(self, drivers: Mapping[PowerType, PowerDriver]) -> None:
        self._drivers = dict(drivers)

    def driver(self, power_type: PowerType) -> PowerDriver:
        try:
            return self._drivers[power_type]
        except KeyError:
            raise BadRequest(f"this rack has no driver for power type {power_type.value}") from None

    @property
    def power_types(self) -> frozenset[PowerType]:
        return frozenset(self._drivers)
