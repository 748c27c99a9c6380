"""Choosing the rack that powers a machine: healthy rack-power services on the BMC's network, load spread.

A rack reaches a BMC when one of the interfaces it reported (address with prefix, ``10.0.0.2/24``) holds the BMC
address. A rack-power service is healthy while it was heard from within three of its heartbeat intervals (the
rule of ``rack_store``). Among several candidates the ones used least recently (by this replica) go first, ties
in random order, so power work spreads over the racks and replicas do not all pick the same one.
"""

import random
from collections.abc import Callable, Mapping, Sequence
from ipaddress import ip_address

from metalbus.contracts.racks import RackServiceKind
from metalbus.db.pool import DbConnection
from metalbus_region.rack_store import HEALTHY_WITHIN_INTERVALS


def order_candidates(candidates: Sequence[str], last_used: Mapping[str, float], rng: random.Random) -> list[str]:
    """Candidates in the order to try them: never used first, then least recently used; ties shuffled."""
    shuffled = list(dict.fromkeys(candidates))
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda rack_id: last_used.get(rack_id, float("-inf")))  # sorted() is stable


async def racks_reaching(conn: DbConnection, bmc_address: str) -> list[str]:
    """Rack ids whose rack-power service is healthy and has an interface on ``bmc_address``'s network."""
    rows = await conn.fetch(
        """
        SELECT rack_id FROM rack_services
         WHERE service = $1
           AND now() - last_seen <= make_interval(secs => heartbeat_interval_s * $2)
           AND EXISTS (SELECT 1 FROM unnest(interfaces) AS interface WHERE $3::inet <<= network(interface))
         ORDER BY rack_id
        """,
        RackServiceKind.POWER.value,
        HEALTHY_WITHIN_INTERVALS,
        str(ip_address(bmc_address)),
    )
    return [str(row["rack_id"]) for row in rows]


class RackRotation:
    """This replica's memory of when it last used each rack, to spread power work; time is injected."""

    def __init__(self, rng: random.Random, monotonic: Callable[[], float]) -> None:
        self._rng = rng
        self._monotonic = monotonic
        self._last_used: dict[str, float] = {}

    def order(self, candidates: Sequence[str]) -> list[str]:
        return order_candidates(candidates, self._last_used, self._rng)

    def used(self, rack_id: str) -> None:
        self._last_used[rack_id] = self._monotonic()
