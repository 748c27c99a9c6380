"""The interface the virtual machines share: its packet transport, the rack's ports, addresses given and taken back.

Every leased address is put on the interface as a /32 (the namespace's kernel then does TCP and UDP from the
machine's own address), with the route to the leased subnet, and announced by gratuitous ARP. ``close``
removes every address still there, even after a failure.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from metalbus.fleet.packet_transport import PacketTransport
from metalbus.netns import NamespaceError, NetworkNamespace


@dataclass
class FleetNetwork:
    namespace: NetworkNamespace
    interface: str
    transport: PacketTransport
    tftp_port: int = 69
    syslog_port: int | None = 514
    addresses: set[IPv4Address] = field(default_factory=set)

    async def take_address(self, address: IPv4Address, subnet_mask: IPv4Address | None) -> None:
        """``address`` is the machine's now: on the interface, announced, its subnet routed."""
        network = IPv4Network(f"{address}/{subnet_mask or '255.255.255.255'}", strict=False)
        await self.namespace.add_address(self.interface, str(address), route_to=str(network))
        self.addresses.add(address)
        self.transport.announce(address)

    async def give_back(self, address: IPv4Address) -> None:
        if address in self.addresses:
            self.addresses.discard(address)
            with contextlib.suppress(NamespaceError):
                await self.namespace.remove_address(self.interface, str(address))

    async def close(self) -> None:
        for address in list(self.addresses):
            await self.give_back(address)
        self.transport.close()


@contextlib.asynccontextmanager
async def fleet_network(
    namespace: NetworkNamespace, interface: str, *, tftp_port: int = 69, syslog_port: int | None = 514
) -> AsyncIterator[FleetNetwork]:
    await namespace.ip("link", "set", interface, "up", "promisc", "on")
    network = FleetNetwork(namespace, interface, PacketTransport(namespace, interface), tftp_port, syslog_port)
    try:
        yield network
    finally:
        await network.close()
        with contextlib.suppress(NamespaceError):  # the interface may be gone with its namespace
            await namespace.ip("link", "set", interface, "promisc", "off")
