"""rack-dhcp's own DHCP path with its leases in a dict: the bench's reference for what the rack costs alone.

Its one job: run rack-dhcp's socket, transport, codec and policy (``serve_interface``, exactly as the service
runs them) on one interface, with a lease source that answers from memory instead of the region. What it
sustains is the ceiling of the Python DHCP path on this host: no region, NATS or PostgreSQL work at all, so no
persistence either (a bench reference, never a way to run a rack). Leases are the same contract objects the
region's replies decode into, validated the same way.

    python bench/rack_dhcp_in_memory.py --interface eth1

It serves the bench's subnet (``dhcp_servers.served_subnet``: the one the region gets in the same run).

Runs until SIGTERM or SIGINT.
"""

import argparse
import asyncio
import signal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address

from dhcp_servers import served_subnet
from metalbus.contracts.errors import Conflict, NotFound
from metalbus.contracts.leases import (
    Lease,
    LeaseAck,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    Subnet,
)
from metalbus.logging import configure_logging
from metalbus_rack_dhcp.server import serve_interface

RACK_ID = "rack-bench-memory"


class MemoryLeaseSource:
    """``policy.LeaseSource`` over one subnet: a MAC keeps its address; new MACs take the next free one."""

    def __init__(self, subnet: Subnet) -> None:
        if subnet.dynamic_start is None or subnet.dynamic_end is None:
            raise ValueError("the subnet has no dynamic range to hand out")
        self.subnet = subnet
        self._free = iter(range(int(subnet.dynamic_start), int(subnet.dynamic_end) + 1))
        self._address_of: dict[str, IPv4Address] = {}
        self._holder_of: dict[IPv4Address, str] = {}

    def _lease(self, mac: str, ip: IPv4Address, state: LeaseState, hostname: str | None) -> Lease:
        expires_at = datetime.now(UTC) + timedelta(seconds=self.subnet.lease_time_s)
        return Lease(
            ip=ip,
            mac=mac,
            subnet_id=self.subnet.subnet_id,
            rack_id=RACK_ID,
            state=state,
            expires_at=expires_at,
            hostname=hostname,
        )

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        if request.link_address not in self.subnet.cidr:
            raise NotFound(f"no subnet holds {request.link_address}")
        address = self._address_of.get(request.mac)
        if address is None:
            candidate = next(self._free, None)
            if candidate is None:
                raise Conflict("the pool is exhausted")
            address = IPv4Address(candidate)
            self._address_of[request.mac], self._holder_of[address] = address, request.mac
        lease = self._lease(request.mac, address, LeaseState.OFFERED, request.hostname)
        return LeaseOffer(lease=lease, subnet=self.subnet)

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        if self._holder_of.get(request.ip) != request.mac:
            raise Conflict(f"{request.ip} is not offered to {request.mac}")
        return self._lease(request.mac, request.ip, LeaseState.BOUND, request.hostname)

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        return await self.commit(request)

    async def release(self, request: LeaseReleaseRequest) -> LeaseAck:
        return LeaseAck(lease=None)

    async def decline(self, request: LeaseReleaseRequest) -> LeaseAck:
        return LeaseAck(lease=None)

    async def subnets(self) -> Sequence[Subnet]:
        return [self.subnet]


async def serve(args: argparse.Namespace) -> None:
    served = served_subnet()
    subnet = Subnet(subnet_id=1, **served.model_dump(exclude={"schema_version", "reserved"}))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop.set)
    protocol = await serve_interface(args.interface, RACK_ID, MemoryLeaseSource(subnet), port=args.port)
    try:
        await stop.wait()
    finally:
        await protocol.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interface", required=True)
    parser.add_argument("--port", type=int, default=67)
    configure_logging("warning")  # as the bench runs the service: no line per lease
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
