"""rack-dhcp's UDP loop without sockets: where replies go (RFC 2131 §4.1), what is dropped and counted."""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

import pytest

from metalbus.contracts.errors import Unavailable
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    Subnet,
)
from metalbus_rack_dhcp.codec import decode_message, encode_message
from metalbus_rack_dhcp.messages import BOOTREPLY, BOOTREQUEST, FLAG_BROADCAST, UNSPECIFIED, DhcpMessage, MessageType
from metalbus_rack_dhcp.policy import RackView
from metalbus_rack_dhcp.request_batcher import StaleRequest
from metalbus_rack_dhcp.server import BROADCAST, Destination, DhcpProtocol, reply_destination

RACK = RackView(rack_id="rack-1", link_address=IPv4Address("10.20.0.2"))
SUBNET = Subnet(
    subnet_id=1,
    cidr=IPv4Network("10.20.0.0/24"),
    gateway=IPv4Address("10.20.0.1"),
    dns_servers=[IPv4Address("10.20.0.53")],
    dynamic_start=IPv4Address("10.20.0.100"),
    dynamic_end=IPv4Address("10.20.0.199"),
    managed=True,
    lease_time_s=600,
    domain="maas.internal",
)
MAC = bytes.fromhex("525400123456")
OFFERED = IPv4Address("10.20.0.100")
CLIENT = IPv4Address("10.20.0.150")
RELAY = IPv4Address("10.30.0.1")


def message(
    kind: MessageType,
    *,
    op: int = BOOTREQUEST,
    flags: int = 0,
    ciaddr: IPv4Address = UNSPECIFIED,
    yiaddr: IPv4Address = UNSPECIFIED,
    giaddr: IPv4Address = UNSPECIFIED,
) -> DhcpMessage:
    return DhcpMessage(
        op=op,
        xid=0x1234,
        chaddr=MAC + bytes(10),
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        giaddr=giaddr,
        options=((53, bytes([kind])),),
    )


OFFER = message(MessageType.OFFER, op=BOOTREPLY, yiaddr=OFFERED)
NAK = message(MessageType.NAK, op=BOOTREPLY)


@pytest.mark.parametrize(
    ("request_", "reply", "expected"),
    [
        pytest.param(message(MessageType.DISCOVER, giaddr=RELAY), OFFER, Destination(RELAY, 67), id="relayed"),
        pytest.param(message(MessageType.REQUEST, giaddr=RELAY), NAK, Destination(RELAY, 67), id="relayed-nak"),
        pytest.param(message(MessageType.REQUEST, ciaddr=CLIENT), NAK, Destination(BROADCAST, 68), id="nak"),
        pytest.param(message(MessageType.REQUEST, ciaddr=CLIENT), OFFER, Destination(CLIENT, 68), id="ciaddr"),
        pytest.param(
            message(MessageType.DISCOVER, flags=FLAG_BROADCAST), OFFER, Destination(BROADCAST, 68), id="broadcast"
        ),
        pytest.param(message(MessageType.DISCOVER), OFFER, Destination(OFFERED, 68, needs_neighbour=True), id="yiaddr"),
        pytest.param(
            message(MessageType.INFORM), message(MessageType.ACK, op=BOOTREPLY), Destination(BROADCAST, 68), id="none"
        ),
    ],
)
def test_reply_goes_where_rfc_2131_section_4_1_says(
    request_: DhcpMessage, reply: DhcpMessage, expected: Destination
) -> None:
    assert reply_destination(request_, reply) == expected


@dataclass
class FakeTransport:
    sent: list[tuple[bytes, tuple[str, int]]] = field(default_factory=list)
    closed: bool = False

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeLeaseSource:
    error: Exception | None = None
    gate: asyncio.Event | None = None
    offers: int = 0

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        self.offers += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        lease = Lease(
            ip=OFFERED,
            mac=request.mac,
            subnet_id=1,
            rack_id=request.rack_id,
            state=LeaseState.OFFERED,
            expires_at=datetime(2026, 11, 25, tzinfo=UTC),
        )
        return LeaseOffer(lease=lease, subnet=SUBNET)

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        raise NotImplementedError

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        raise NotImplementedError

    async def release(self, request: LeaseReleaseRequest) -> object:
        raise NotImplementedError

    async def decline(self, request: LeaseReleaseRequest) -> object:
        raise NotImplementedError

    async def subnets(self) -> Sequence[Subnet]:
        return [SUBNET]


def protocol_with(
    leases: FakeLeaseSource, neighbour_ok: bool = True, max_in_flight: int = 8
) -> tuple[DhcpProtocol, FakeTransport, list[IPv4Address]]:
    neighbours: list[IPv4Address] = []

    async def set_neighbour(interface: str, address: IPv4Address, mac: bytes) -> bool:
        assert (interface, mac) == ("eth0", MAC)
        neighbours.append(address)
        return neighbour_ok

    protocol = DhcpProtocol("eth0", RACK, leases, max_in_flight=max_in_flight, neighbour_setter=set_neighbour)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport, neighbours


async def settle(protocol: DhcpProtocol) -> None:
    while protocol.in_flight:
        await asyncio.gather(*protocol.in_flight)


DISCOVER = encode_message(message(MessageType.DISCOVER))


async def test_discover_is_answered_by_unicast_after_the_neighbour_entry_is_set() -> None:
    protocol, transport, neighbours = protocol_with(FakeLeaseSource())

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await settle(protocol)

    [(payload, destination)] = transport.sent
    assert destination == (str(OFFERED), 68)
    assert neighbours == [OFFERED]
    reply = decode_message(payload)
    assert (reply.message_type, reply.yiaddr, reply.xid) == (MessageType.OFFER, OFFERED, 0x1234)
    assert (protocol.counters.received, protocol.counters.replied) == ({"DISCOVER": 1}, {"OFFER": 1})


async def test_reply_is_broadcast_when_the_neighbour_entry_cannot_be_set() -> None:
    protocol, transport, _ = protocol_with(FakeLeaseSource(), neighbour_ok=False)

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await settle(protocol)

    assert [destination for _, destination in transport.sent] == [("255.255.255.255", 68)]
    assert protocol.counters.neighbour_fallbacks == 1


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "decode: truncated header"),
        (b"\x01" * 20, "decode: truncated header"),
        (DISCOVER[:236] + b"\x00\x00\x00\x00" + DISCOVER[240:], "decode: bad magic cookie"),
    ],
)
async def test_undecodable_datagram_is_dropped_and_counted_by_reason(datagram: bytes, reason: str) -> None:
    protocol, transport, _ = protocol_with(FakeLeaseSource())

    protocol.datagram_received(datagram, ("10.20.0.9", 68))
    await settle(protocol)

    assert transport.sent == []
    assert protocol.counters.dropped == {reason: 1}
    assert protocol.counters.received == {}


async def test_silence_is_counted_by_the_policys_reason() -> None:
    protocol, transport, _ = protocol_with(FakeLeaseSource(error=Unavailable("region away")))

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await settle(protocol)

    assert transport.sent == []
    assert protocol.counters.silent == {"source_unavailable": 1}


async def test_datagrams_beyond_the_in_flight_bound_are_dropped_as_overloaded() -> None:
    gate = asyncio.Event()
    leases = FakeLeaseSource(gate=gate)
    protocol, transport, _ = protocol_with(leases, max_in_flight=2)

    for _ in range(3):
        protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    gate.set()
    await settle(protocol)

    assert protocol.counters.dropped == {"overloaded": 1}
    assert len(transport.sent) == 2


async def test_an_unexpected_error_is_counted_and_the_server_keeps_answering() -> None:
    leases = FakeLeaseSource(error=RuntimeError("bug"))
    protocol, transport, _ = protocol_with(leases)

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await settle(protocol)
    leases.error = None
    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await settle(protocol)

    assert protocol.counters.dropped == {"unexpected_error": 2}
    assert len(transport.sent) == 1


async def test_close_cancels_requests_in_flight_and_sends_nothing_more() -> None:
    leases = FakeLeaseSource(gate=asyncio.Event())
    protocol, transport, _ = protocol_with(leases)
    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    await asyncio.sleep(0)

    await protocol.close()

    assert (transport.closed, protocol.in_flight, transport.sent) == (True, set(), [])
    assert leases.offers == 1


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def protocol_on_clock(leases: FakeLeaseSource, clock: FakeClock) -> tuple[DhcpProtocol, FakeTransport]:
    protocol = DhcpProtocol("eth0", RACK, leases, neighbour_setter=None, max_wait_s=0.5, clock=clock)
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


async def test_a_request_that_waited_longer_than_max_wait_before_it_was_read_is_dropped_as_stale() -> None:
    clock, leases = FakeClock(), FakeLeaseSource()
    protocol, transport = protocol_on_clock(leases, clock)

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68), received_at=clock.now - 0.6)
    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68), received_at=clock.now - 0.4)
    await settle(protocol)

    assert protocol.counters.dropped == {"stale": 1}
    assert (protocol.counters.received, protocol.counters.replied) == ({"DISCOVER": 1}, {"OFFER": 1})
    assert (leases.offers, len(transport.sent)) == (1, 1)


async def test_a_request_that_went_stale_waiting_for_its_turn_never_reaches_the_region() -> None:
    clock, leases = FakeClock(), FakeLeaseSource()
    protocol, transport = protocol_on_clock(leases, clock)

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68), received_at=clock.now)
    clock.now += 0.51  # the loop was busy: the task starts late
    await settle(protocol)

    assert protocol.counters.dropped == {"stale": 1}
    assert (leases.offers, transport.sent) == (0, [])


async def test_without_a_max_wait_nothing_is_stale() -> None:
    clock, leases = FakeClock(), FakeLeaseSource()
    protocol, transport = protocol_on_clock(leases, clock)
    protocol.max_wait_s = 0

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68), received_at=clock.now - 60)
    await settle(protocol)

    assert protocol.counters.dropped == {}
    assert len(transport.sent) == 1


async def test_a_request_the_batcher_shed_as_stale_is_counted_as_stale() -> None:
    clock = FakeClock()
    protocol, transport = protocol_on_clock(FakeLeaseSource(error=StaleRequest()), clock)

    protocol.datagram_received(DISCOVER, ("0.0.0.0", 68), received_at=clock.now)
    await settle(protocol)

    assert (protocol.counters.dropped, protocol.counters.silent, transport.sent) == ({"stale": 1}, {}, [])
