"""A namespace and veth pair made for a fleet run: the machines' end inside, the rack's end outside with an address.

Names carry a random suffix (several runs may share a host); both are deleted on the way out, even after a
failure (deleting the rack's end deletes the pair; deleting the namespace removes whatever is left in it).
"""

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from metalbus.fleet.netns import NamespaceError, NetworkNamespace


@dataclass(frozen=True)
class FleetLink:
    namespace: NetworkNamespace
    machine_interface: str
    rack_interface: str


@contextlib.asynccontextmanager
async def fleet_link(rack_interface: str | None, rack_address: str) -> AsyncIterator[FleetLink]:
    """A fresh namespace ``mbfleet<hex>`` with interface ``mbfm<hex>``; the rack's end ``rack_interface`` (or
    ``mbfr<hex>``) in this namespace with ``rack_address`` (``10.x.y.2/24``) on it, up."""
    suffix = secrets.token_hex(3)
    name, machine_end, rack_end = f"mbfleet{suffix}", f"mbfm{suffix}", rack_interface or f"mbfr{suffix}"
    host, inside = NetworkNamespace(None), NetworkNamespace(name)
    try:
        await host.ip("netns", "add", name)
        await host.ip("link", "add", rack_end, "type", "veth", "peer", "name", machine_end, "netns", name)
        await host.ip("addr", "add", rack_address, "dev", rack_end)
        await host.ip("link", "set", rack_end, "up")
        await inside.ip("link", "set", "lo", "up")
        await inside.ip("link", "set", machine_end, "up")
        yield FleetLink(inside, machine_end, rack_end)
    finally:
        for command in (("link", "del", rack_end), ("netns", "del", name)):
            with contextlib.suppress(NamespaceError):
                await host.ip(*command)
