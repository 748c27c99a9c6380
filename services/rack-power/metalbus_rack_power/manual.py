"""The manual power driver: an operator presses the button, so the rack can only say it does not know.

The region never sends a manual machine's power command to a rack (it records that the operator must act); if
one arrives anyway, on/off/cycle/PXE are refused with BadRequest naming the reason, and query answers unknown.
"""

from metalbus.contracts.errors import BadRequest
from metalbus.contracts.power import PowerState
from metalbus_rack_power.drivers import Bmc

REFUSAL = "power type is manual: an operator powers this machine, no rack can"


class ManualDriver:
    async def on(self, bmc: Bmc) -> None:
        raise BadRequest(REFUSAL)

    async def off(self, bmc: Bmc) -> None:
        raise BadRequest(REFUSAL)

    async def cycle(self, bmc: Bmc) -> None:
        raise BadRequest(REFUSAL)

    async def query(self, bmc: Bmc) -> PowerState:
        return PowerState.UNKNOWN

    async def set_boot_pxe(self, bmc: Bmc) -> None:
        raise BadRequest(REFUSAL)
