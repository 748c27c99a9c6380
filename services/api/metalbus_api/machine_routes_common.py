"""What every machine route shares: the system id path parameter, the Idempotency-Key header, and the 409 of an
action the machine's status does not allow, which names that status (``current_status``)."""

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Header, Path

from metalbus.contracts.errors import InvalidTransition, MetalbusError
from metalbus.contracts.machines import MachineQuery
from metalbus.subjects import MACHINE_GET
from metalbus_api.errors import MachineTransitionRefused
from metalbus_api.region_client import RegionClient

SystemIdPath = Annotated[
    str, Path(pattern=r"^[a-z0-9]{6}$", description="MAAS-style six-character machine id.", examples=["x7kq2m"])
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=8,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Repeat the command with the same key and it is applied once (wins over a body field).",
    ),
]


@contextlib.asynccontextmanager
async def naming_current_status(region: RegionClient, system_id: str) -> AsyncIterator[None]:
    """Turn the region's invalid_transition into one that carries the machine's status as it is now."""
    try:
        yield
    except MachineTransitionRefused:
        raise
    except InvalidTransition as error:
        try:
            current = (await region.ask(MACHINE_GET, MachineQuery(system_id=system_id))).status
        except MetalbusError:
            current = None
        raise MachineTransitionRefused(error.message, current) from error
