"""Power-state polling, region side: tell a rack which machines to poll, record the changes it observes.

A rack's rack-power polls the machines with a BMC (ipmi, redfish) on one of the networks it announced; several
racks on one network each poll (the region keeps one state, so a change is recorded once). An observation that
differs from the machine's recorded ``power_state`` updates it and records a power event (action ``query``)
in the same transaction; an observation of the state already recorded changes nothing.
"""

import json

from metalbus.contracts.errors import NotFound
from metalbus.contracts.machines import PowerType
from metalbus.contracts.power import (
    PowerAction,
    PowerObservation,
    PowerObservationAck,
    PowerTargets,
    PowerTargetSpec,
    PowerTargetsQuery,
)
from metalbus.contracts.racks import RackServiceKind
from metalbus.db.pool import DbConnection
from metalbus.subjects import POWER_OBSERVED, POWER_TARGETS
from metalbus_region.context import RegionContext, Route
from metalbus_region.power_client import PowerOutcome, record_power_event

POLLED_POWER_TYPES = (PowerType.IPMI.value, PowerType.REDFISH.value)


def routes(ctx: RegionContext) -> list[Route]:
    polling = PowerPolling(ctx)
    return [(POWER_TARGETS, polling.targets), (POWER_OBSERVED, polling.observed)]


async def targets_of_rack(conn: DbConnection, rack_id: str) -> list[PowerTargetSpec]:
    """Machines with an ipmi/redfish BMC inside a network the rack's rack-power announced, with their secrets."""
    rows = await conn.fetch(
        """
        SELECT m.system_id, m.power_type, m.power_parameters::text AS power_parameters,
               coalesce(s.secrets, '{}'::jsonb)::text AS secrets
          FROM machines m LEFT JOIN machine_power_secrets s USING (system_id)
         WHERE m.power_type = ANY($2::text[])
           AND m.bmc_address IS NOT NULL
           AND EXISTS (SELECT 1 FROM rack_services r, unnest(r.interfaces) AS interface
                        WHERE r.rack_id = $1 AND r.service = $3 AND m.bmc_address <<= network(interface))
         ORDER BY m.system_id
        """,
        rack_id,
        list(POLLED_POWER_TYPES),
        RackServiceKind.POWER.value,
    )
    return [
        PowerTargetSpec(
            system_id=row["system_id"],
            power_type=PowerType(row["power_type"]),
            parameters=json.loads(row["power_parameters"]),
            secrets=json.loads(row["secrets"]),
        )
        for row in rows
    ]


async def record_observation(conn: DbConnection, observation: PowerObservation) -> bool:
    """Store the observed state if it differs; True (and a power event recorded) when it did."""
    changed = await conn.fetchval(
        """
        UPDATE machines SET power_state = $2, power_state_changed_at = now()
         WHERE system_id = $1 AND power_state <> $2
        RETURNING true
        """,
        observation.system_id,
        observation.state.value,
    )
    if changed is None:
        if await conn.fetchval("SELECT 1 FROM machines WHERE system_id = $1", observation.system_id) is None:
            raise NotFound(f"no machine {observation.system_id}")
        return False
    outcome = PowerOutcome(observation.system_id, PowerAction.QUERY, observation.state, observation.rack_id)
    await record_power_event(conn, outcome)
    return True


class PowerPolling:
    def __init__(self, ctx: RegionContext) -> None:
        self._ctx = ctx

    async def targets(self, query: PowerTargetsQuery) -> PowerTargets:
        async with self._ctx.database.connection() as conn:
            return PowerTargets(targets=await targets_of_rack(conn, query.rack_id))

    async def observed(self, observation: PowerObservation) -> PowerObservationAck:
        async with self._ctx.database.connection() as conn, conn.transaction():
            changed = await record_observation(conn, observation)
        if changed:
            self._ctx.outbox.wake()
        return PowerObservationAck(system_id=observation.system_id, changed=changed)
