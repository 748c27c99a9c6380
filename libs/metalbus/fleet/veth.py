"""A namespace and veth pair made for a fleet run: the machines' end inside, the rack's end outside with an address;
optionally further rack hosts, each a namespace of its own joined to the machines' segment.

With further racks the machines' namespace holds a bridge (``mbfb<hex>``, no STP, no forwarding delay) that every
rack's veth joins; the machines then live on the bridge, one broadcast domain with every rack, as machines on a
switch with two rack controllers. Names carry a random suffix (several runs may share a host); everything is
deleted on the way out, even after a failure (deleting the rack's end deletes the pair; deleting a namespace
removes whatever is left in it).
"""

import contextlib
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from metalbus.netns import NamespaceError, NetworkNamespace

RACK_HOST_INTERFACE = "mbrack0"
"""The name of the machine-facing interface inside each further rack's namespace."""


@dataclass(frozen=True)
class RackHost:
    """A further rack's namespace, its machine-facing interface and that interface's address (``10.x.y.4/21``)."""

    namespace: NetworkNamespace
    interface: str
    address: str


@dataclass(frozen=True)
class FleetLink:
    namespace: NetworkNamespace
    machine_interface: str
    rack_interface: str
    rack_hosts: list[RackHost] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fleet_link(
    rack_interface: str | None, rack_address: str, further_rack_addresses: Sequence[str] = ()
) -> AsyncIterator[FleetLink]:
    """A fresh namespace ``mbfleet<hex>`` with interface ``mbfm<hex>``; the rack's end ``rack_interface`` (or
    ``mbfr<hex>``) in this namespace with ``rack_address`` (``10.x.y.2/24``) on it, up. For each of
    ``further_rack_addresses`` a namespace ``mbrk<n><hex>`` whose interface ``mbrack0`` has that address and
    shares the machines' segment (the machines' interface is then the bridge ``mbfb<hex>``)."""
    suffix = secrets.token_hex(3)
    name, machine_end, rack_end = f"mbfleet{suffix}", f"mbfm{suffix}", rack_interface or f"mbfr{suffix}"
    host, inside = NetworkNamespace(None), NetworkNamespace(name)
    made_namespaces = [name]
    try:
        await host.ip("netns", "add", name)
        await host.ip("link", "add", rack_end, "type", "veth", "peer", "name", machine_end, "netns", name)
        await host.ip("addr", "add", rack_address, "dev", rack_end)
        await host.ip("link", "set", rack_end, "up")
        await inside.ip("link", "set", "lo", "up")
        await inside.ip("link", "set", machine_end, "up")
        machines_on, rack_hosts = machine_end, []
        if further_rack_addresses:
            machines_on = f"mbfb{suffix}"
            await inside.ip("link", "add", machines_on, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            await inside.ip("link", "set", machine_end, "master", machines_on)
            for number, address in enumerate(further_rack_addresses, start=2):
                rack_namespace = f"mbrk{number}{suffix}"
                made_namespaces.append(rack_namespace)
                rack_hosts.append(
                    await _rack_host(inside, machines_on, rack_namespace, f"mbfx{number}{suffix}", address)
                )
            await inside.ip("link", "set", machines_on, "up")
        yield FleetLink(inside, machines_on, rack_end, rack_hosts)
    finally:
        with contextlib.suppress(NamespaceError):
            await host.ip("link", "del", rack_end)
        for namespace in reversed(made_namespaces):
            with contextlib.suppress(NamespaceError):
                await host.ip("netns", "del", namespace)


async def _rack_host(
    machines: NetworkNamespace, bridge: str, namespace: str, bridge_port: str, address: str
) -> RackHost:
    """A namespace for one more rack, its interface on ``bridge`` in the machines' namespace."""
    host, rack = NetworkNamespace(None), NetworkNamespace(namespace)
    await host.ip("netns", "add", namespace)
    await machines.ip(
        "link", "add", bridge_port, "type", "veth", "peer", "name", RACK_HOST_INTERFACE, "netns", namespace
    )
    await machines.ip("link", "set", bridge_port, "master", bridge)
    await machines.ip("link", "set", bridge_port, "up")
    await rack.ip("link", "set", "lo", "up")
    await rack.ip("addr", "add", address, "dev", RACK_HOST_INTERFACE)
    await rack.ip("link", "set", RACK_HOST_INTERFACE, "up")
    return RackHost(rack, RACK_HOST_INTERFACE, address)
