"""What rack-dhcp answers: each request against a fake lease source, compared with the whole expected reply."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

import pytest

from metalbus.contracts.base import Message
from metalbus.contracts.errors import (
    BadRequest,
    Conflict,
    MetalbusError,
    NotFound,
    Timeout,
    Unavailable,
)
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    LeaseState,
    Subnet,
)
from metalbus_rack_dhcp.messages import BOOTREPLY, BOOTREQUEST, UNSPECIFIED, DhcpMessage
from metalbus_rack_dhcp.policy import RackView, Silence, SilenceReason, answer, decide

RACK = RackView(rack_id="rack-1", link_address=IPv4Address("10.20.0.2"))
LOCAL = Subnet(
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
REMOTE = Subnet(  # behind a relay at 10.30.0.1; no DNS of its own, no domain
    subnet_id=2,
    cidr=IPv4Network("10.30.0.0/24"),
    gateway=IPv4Address("10.30.0.1"),
    dns_servers=[],
    dynamic_start=IPv4Address("10.30.0.100"),
    dynamic_end=IPv4Address("10.30.0.199"),
    managed=True,
    lease_time_s=3600,
    domain="",
)
UNMANAGED = LOCAL.model_copy(update={"subnet_id": 3, "cidr": IPv4Network("10.40.0.0/24"), "managed": False})
MAC = "52:54:00:12:34:56"
CHADDR = bytes.fromhex("525400123456") + bytes(10)
XID = 0x1A2B3C4D
RELAY = IPv4Address("10.30.0.1")
AGENT_INFO = b"\x01\x06eth0/7\x02\x04sw01"  # option 82: circuit id, remote id
PXE_BIOS = ((93, b"\x00\x00"), (60, b"PXEClient:Arch:00000:UNDI:002001"))
PXE_EFI = ((93, b"\x00\x07"), (60, b"PXEClient:Arch:00007:UNDI:003016"))


def ip(text: str) -> IPv4Address:
    return IPv4Address(text)


def packed(*addresses: str) -> bytes:
    return b"".join(ip(address).packed for address in addresses)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def lease(address: str, subnet_id: int = 1, hostname: str | None = None) -> Lease:
    return Lease(
        ip=ip(address),
        mac=MAC,
        subnet_id=subnet_id,
        rack_id="rack-1",
        state=LeaseState.BOUND,
        expires_at=datetime(2026, 11, 25, 6, 10, tzinfo=UTC),
        hostname=hostname,
    )


def client(
    kind: int,
    *options: tuple[int, bytes],
    ciaddr: IPv4Address = UNSPECIFIED,
    giaddr: IPv4Address = UNSPECIFIED,
    flags: int = 0,
    hops: int = 0,
) -> DhcpMessage:
    return DhcpMessage(
        op=BOOTREQUEST,
        xid=XID,
        chaddr=CHADDR,
        hops=hops,
        secs=4,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        options=((53, bytes([kind])), *options),
    )


def server(
    kind: int,
    *options: tuple[int, bytes],
    ciaddr: IPv4Address = UNSPECIFIED,
    yiaddr: IPv4Address = UNSPECIFIED,
    siaddr: IPv4Address = UNSPECIFIED,
    giaddr: IPv4Address = UNSPECIFIED,
    flags: int = 0,
    hops: int = 0,
    file: bytes = b"",
) -> DhcpMessage:
    return DhcpMessage(
        op=BOOTREPLY,
        xid=XID,
        chaddr=CHADDR,
        hops=hops,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=giaddr,
        file=file,
        options=((53, bytes([kind])), *options),
    )


DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
OURS = (54, packed("10.20.0.2"))
LOCAL_LEASE_TIMES = ((51, u32(600)), (58, u32(300)), (59, u32(525)))
LOCAL_SETTINGS = (
    (1, packed("255.255.255.0")),
    (3, packed("10.20.0.1")),
    (6, packed("10.20.0.53")),
    (15, b"maas.internal"),
    (42, packed("10.20.0.2")),
)


@dataclass
class FakeLeaseSource:
    """Answers each call with its configured result, or raises its configured error; records the calls."""

    outcomes: dict[str, object] = field(default_factory=dict)
    subnet_list: Sequence[Subnet] = (LOCAL, REMOTE, UNMANAGED)
    calls: list[tuple[str, Message]] = field(default_factory=list)

    def _outcome(self, name: str, request: Message) -> object:
        self.calls.append((name, request))
        outcome = self.outcomes[name]
        if isinstance(outcome, MetalbusError):
            raise outcome
        return outcome

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer:
        outcome = self._outcome("offer", request)
        assert isinstance(outcome, LeaseOffer)
        return outcome

    async def commit(self, request: LeaseCommitRequest) -> Lease:
        outcome = self._outcome("commit", request)
        assert isinstance(outcome, Lease)
        return outcome

    async def renew(self, request: LeaseCommitRequest) -> Lease:
        outcome = self._outcome("renew", request)
        assert isinstance(outcome, Lease)
        return outcome

    async def release(self, request: LeaseReleaseRequest) -> object:
        return self._outcome("release", request)

    async def decline(self, request: LeaseReleaseRequest) -> object:
        return self._outcome("decline", request)

    async def subnets(self) -> Sequence[Subnet]:
        error = self.outcomes.get("subnets")
        if isinstance(error, MetalbusError):
            raise error
        return self.subnet_list


def offer_of(address: str, subnet: Subnet = LOCAL, hostname: str | None = None) -> LeaseOffer:
    return LeaseOffer(lease=lease(address, subnet.subnet_id, hostname), subnet=subnet)


def offer_request(link: str = "10.20.0.2", requested: str | None = None, hostname: str | None = None) -> Message:
    return LeaseOfferRequest(
        rack_id="rack-1",
        mac=MAC,
        link_address=ip(link),
        requested_ip=ip(requested) if requested else None,
        hostname=hostname,
    )


def commit_request(address: str, hostname: str | None = None) -> Message:
    return LeaseCommitRequest(rack_id="rack-1", mac=MAC, ip=ip(address), hostname=hostname)


def release_request(address: str) -> Message:
    return LeaseReleaseRequest(rack_id="rack-1", mac=MAC, ip=ip(address))


@dataclass(frozen=True)
class Case:
    request: DhcpMessage
    outcomes: dict[str, object]
    reply: DhcpMessage | None
    calls: list[tuple[str, Message]]


CASES = {
    # -- DISCOVER → OFFER --------------------------------------------------------------------------------
    "discover-plain-client-gets-an-address-and-no-boot-file": Case(
        client(DISCOVER),
        {"offer": offer_of("10.20.0.100")},
        server(OFFER, OURS, *LOCAL_LEASE_TIMES, *LOCAL_SETTINGS, yiaddr=ip("10.20.0.100")),
        [("offer", offer_request())],
    ),
    "discover-bios-pxe-in-parameter-request-list-order": Case(
        client(
            DISCOVER,
            (55, bytes([1, 3, 6, 12, 15, 28, 42, 43, 66, 67])),
            (57, b"\x05\xc0"),
            (50, packed("10.20.0.150")),
            (12, b"node-1\x00"),
            *PXE_BIOS,
        ),
        {"offer": offer_of("10.20.0.150", hostname="node-1")},
        server(
            OFFER,
            OURS,
            *LOCAL_LEASE_TIMES,
            *LOCAL_SETTINGS[:3],
            (12, b"node-1"),
            *LOCAL_SETTINGS[3:],
            (66, b"10.20.0.2"),
            (67, b"lpxelinux.0"),
            yiaddr=ip("10.20.0.150"),
            siaddr=ip("10.20.0.2"),
            file=b"lpxelinux.0",
        ),
        [("offer", offer_request(requested="10.20.0.150", hostname="node-1"))],
    ),
    "discover-relayed-uses-giaddr-keeps-hops-flags-and-echoes-option-82": Case(
        client(DISCOVER, *PXE_EFI, (82, AGENT_INFO), giaddr=RELAY, hops=1, flags=0x8000),
        {"offer": offer_of("10.30.0.100", REMOTE)},
        server(
            OFFER,
            OURS,
            (51, u32(3600)),
            (58, u32(1800)),
            (59, u32(3150)),
            (1, packed("255.255.255.0")),
            (3, packed("10.30.0.1")),
            (6, packed("10.20.0.2")),  # the subnet has no DNS server: the rack answers DNS
            (42, packed("10.20.0.2")),
            (66, b"10.20.0.2"),
            (67, b"bootx64.efi"),
            (82, AGENT_INFO),
            yiaddr=ip("10.30.0.100"),
            siaddr=ip("10.20.0.2"),
            file=b"bootx64.efi",
            giaddr=RELAY,
            hops=1,
            flags=0x8000,
        ),
        [("offer", offer_request(link="10.30.0.1"))],
    ),
    "discover-ipxe-gets-its-script-over-http": Case(
        client(DISCOVER, *PXE_BIOS, (77, b"iPXE"), (55, bytes([67, 1]))),
        {"offer": offer_of("10.20.0.100")},
        server(
            OFFER,
            OURS,
            *LOCAL_LEASE_TIMES,
            (67, b"http://10.20.0.2:5248/ipxe.cfg-${mac}"),
            *LOCAL_SETTINGS,
            (175, bytes((176, 1, 1))),  # iPXE no-pxedhcp
            yiaddr=ip("10.20.0.100"),
            siaddr=ip("10.20.0.2"),
            file=b"http://10.20.0.2:5248/ipxe.cfg-${mac}",
        ),
        [("offer", offer_request())],
    ),
    "discover-uefi-http-boot-gets-a-url-and-httpclient-back": Case(
        client(DISCOVER, (93, b"\x00\x10"), (60, b"HTTPClient:Arch:00016:UNDI:003001")),
        {"offer": offer_of("10.20.0.100")},
        server(
            OFFER,
            OURS,
            *LOCAL_LEASE_TIMES,
            *LOCAL_SETTINGS,
            (60, b"HTTPClient"),
            (67, b"http://10.20.0.2:5248/images/bootx64.efi"),
            yiaddr=ip("10.20.0.100"),
            siaddr=ip("10.20.0.2"),
            file=b"http://10.20.0.2:5248/images/bootx64.efi",
        ),
        [("offer", offer_request())],
    ),
    "discover-on-unknown-link-is-not-answered": Case(
        client(DISCOVER), {"offer": NotFound("no managed subnet")}, None, [("offer", offer_request())]
    ),
    "discover-with-exhausted-pool-is-not-answered": Case(
        client(DISCOVER), {"offer": Conflict("exhausted")}, None, [("offer", offer_request())]
    ),
    "discover-while-region-unavailable-is-not-answered": Case(
        client(DISCOVER), {"offer": Unavailable("no region")}, None, [("offer", offer_request())]
    ),
    "discover-while-region-times-out-is-not-answered": Case(
        client(DISCOVER), {"offer": Timeout("slow region")}, None, [("offer", offer_request())]
    ),
    # -- REQUEST, SELECTING -------------------------------------------------------------------------------
    "selecting-our-offer-is-committed-and-acked": Case(
        client(REQUEST, OURS, (50, packed("10.20.0.100")), (12, b"node-1"), *PXE_EFI),
        {"commit": lease("10.20.0.100", hostname="node-1")},
        server(
            ACK,
            OURS,
            *LOCAL_LEASE_TIMES,
            *LOCAL_SETTINGS[:3],
            (12, b"node-1"),
            *LOCAL_SETTINGS[3:],
            (66, b"10.20.0.2"),
            (67, b"bootx64.efi"),
            yiaddr=ip("10.20.0.100"),
            siaddr=ip("10.20.0.2"),
            file=b"bootx64.efi",
        ),
        [("commit", commit_request("10.20.0.100", "node-1"))],
    ),
    "selecting-another-server-is-not-answered": Case(
        client(REQUEST, (54, packed("10.20.0.3")), (50, packed("10.20.0.100"))), {}, None, []
    ),
    "selecting-without-requested-address-is-not-answered": Case(client(REQUEST, OURS), {}, None, []),
    "selecting-a-conflicting-address-is-nakked": Case(
        client(REQUEST, OURS, (50, packed("10.20.0.100")), (82, AGENT_INFO)),
        {"commit": Conflict("10.20.0.100 is held by another client")},
        server(NAK, OURS, (56, b"10.20.0.100 is held by another client"), (82, AGENT_INFO)),
        [("commit", commit_request("10.20.0.100"))],
    ),
    "selecting-an-unknown-lease-is-not-answered": Case(
        client(REQUEST, OURS, (50, packed("10.20.0.100"))),
        {"commit": NotFound("nothing")},
        None,
        [("commit", commit_request("10.20.0.100"))],
    ),
    "selecting-while-region-unavailable-is-not-answered": Case(
        client(REQUEST, OURS, (50, packed("10.20.0.100"))),
        {"commit": Unavailable("no region")},
        None,
        [("commit", commit_request("10.20.0.100"))],
    ),
    "selecting-relayed-conflict-nak-is-broadcast-by-the-relay": Case(
        client(REQUEST, OURS, (50, packed("10.30.0.100")), (82, AGENT_INFO), giaddr=RELAY, hops=2),
        {"commit": Conflict("taken")},
        server(NAK, OURS, (56, b"taken"), (82, AGENT_INFO), giaddr=RELAY, hops=2, flags=0x8000),
        [("commit", commit_request("10.30.0.100"))],
    ),
    # -- REQUEST, INIT-REBOOT -----------------------------------------------------------------------------
    "init-reboot-on-the-right-network-is-committed-and-acked": Case(
        client(REQUEST, (50, packed("10.20.0.120"))),
        {"commit": lease("10.20.0.120")},
        server(ACK, OURS, *LOCAL_LEASE_TIMES, *LOCAL_SETTINGS, yiaddr=ip("10.20.0.120")),
        [("commit", commit_request("10.20.0.120"))],
    ),
    "init-reboot-on-the-wrong-network-is-nakked-without-asking": Case(
        client(REQUEST, (50, packed("192.168.1.20"))),
        {},
        server(NAK, OURS, (56, b"192.168.1.20 is not on this network (10.20.0.0/24)")),
        [],
    ),
    "init-reboot-relayed-checks-the-relay-network-and-broadcasts-the-nak": Case(
        client(REQUEST, (50, packed("10.20.0.120")), (82, AGENT_INFO), giaddr=RELAY, hops=1),
        {},
        server(
            NAK,
            OURS,
            (56, b"10.20.0.120 is not on this network (10.30.0.0/24)"),
            (82, AGENT_INFO),
            giaddr=RELAY,
            hops=1,
            flags=0x8000,
        ),
        [],
    ),
    "init-reboot-relayed-on-the-relay-network-is-committed": Case(
        client(REQUEST, (50, packed("10.30.0.120")), giaddr=RELAY, hops=1),
        {"commit": lease("10.30.0.120", subnet_id=2)},
        server(
            ACK,
            OURS,
            (51, u32(3600)),
            (58, u32(1800)),
            (59, u32(3150)),
            (1, packed("255.255.255.0")),
            (3, packed("10.30.0.1")),
            (6, packed("10.20.0.2")),
            (42, packed("10.20.0.2")),
            yiaddr=ip("10.30.0.120"),
            giaddr=RELAY,
            hops=1,
        ),
        [("commit", commit_request("10.30.0.120"))],
    ),
    "init-reboot-from-a-link-we-do-not-manage-is-not-answered": Case(
        client(REQUEST, (50, packed("10.40.0.120")), giaddr=ip("10.40.0.1")), {}, None, []
    ),
    "init-reboot-to-an-address-held-by-another-is-nakked": Case(
        client(REQUEST, (50, packed("10.20.0.120"))),
        {"commit": Conflict("10.20.0.120 is held by another client")},
        server(NAK, OURS, (56, b"10.20.0.120 is held by another client")),
        [("commit", commit_request("10.20.0.120"))],
    ),
    # -- REQUEST, RENEWING / REBINDING --------------------------------------------------------------------
    "renewing-extends-ciaddr-and-acks-with-ciaddr": Case(
        client(REQUEST, ciaddr=ip("10.20.0.100")),
        {"renew": lease("10.20.0.100")},
        server(ACK, OURS, *LOCAL_LEASE_TIMES, *LOCAL_SETTINGS, ciaddr=ip("10.20.0.100"), yiaddr=ip("10.20.0.100")),
        [("renew", commit_request("10.20.0.100"))],
    ),
    "rebinding-broadcast-is-renewed-and-keeps-its-flags": Case(
        client(REQUEST, ciaddr=ip("10.20.0.100"), flags=0x8000),
        {"renew": lease("10.20.0.100")},
        server(
            ACK,
            OURS,
            *LOCAL_LEASE_TIMES,
            *LOCAL_SETTINGS,
            ciaddr=ip("10.20.0.100"),
            yiaddr=ip("10.20.0.100"),
            flags=0x8000,
        ),
        [("renew", commit_request("10.20.0.100"))],
    ),
    "renewing-a-binding-the-region-no-longer-holds-is-nakked": Case(
        client(REQUEST, ciaddr=ip("10.20.0.100")),
        {"renew": NotFound("no current binding")},
        server(NAK, OURS, (56, b"no current binding")),
        [("renew", commit_request("10.20.0.100"))],
    ),
    "renewing-a-conflicting-address-is-nakked": Case(
        client(REQUEST, ciaddr=ip("10.20.0.100")),
        {"renew": Conflict("declined")},
        server(NAK, OURS, (56, b"declined")),
        [("renew", commit_request("10.20.0.100"))],
    ),
    "renewing-while-region-times-out-is-not-answered": Case(
        client(REQUEST, ciaddr=ip("10.20.0.100")),
        {"renew": Timeout("slow")},
        None,
        [("renew", commit_request("10.20.0.100"))],
    ),
    "request-with-no-state-at-all-is-not-answered": Case(client(REQUEST), {}, None, []),
    # -- RELEASE, DECLINE, INFORM -------------------------------------------------------------------------
    "release-frees-ciaddr-and-is-not-answered": Case(
        client(RELEASE, OURS, ciaddr=ip("10.20.0.100")),
        {"release": None},
        None,
        [("release", release_request("10.20.0.100"))],
    ),
    "release-to-another-server-is-left-alone": Case(
        client(RELEASE, (54, packed("10.20.0.3")), ciaddr=ip("10.20.0.100")), {}, None, []
    ),
    "release-while-region-unavailable-is-dropped": Case(
        client(RELEASE, OURS, ciaddr=ip("10.20.0.100")),
        {"release": Unavailable("no region")},
        None,
        [("release", release_request("10.20.0.100"))],
    ),
    "decline-quarantines-the-requested-address-and-is-not-answered": Case(
        client(DECLINE, OURS, (50, packed("10.20.0.100"))),
        {"decline": None},
        None,
        [("decline", release_request("10.20.0.100"))],
    ),
    "decline-without-the-address-is-dropped": Case(client(DECLINE, OURS), {}, None, []),
    "inform-gets-settings-but-no-address-or-lease-time": Case(
        client(INFORM, *PXE_BIOS, (82, AGENT_INFO), ciaddr=ip("10.20.0.77")),
        {},
        server(
            ACK,
            OURS,
            *LOCAL_SETTINGS,
            (66, b"10.20.0.2"),
            (67, b"lpxelinux.0"),
            (82, AGENT_INFO),
            ciaddr=ip("10.20.0.77"),
            siaddr=ip("10.20.0.2"),
            file=b"lpxelinux.0",
        ),
        [],
    ),
    "inform-from-an-unmanaged-subnet-is-not-answered": Case(client(INFORM, ciaddr=ip("10.40.0.77")), {}, None, []),
    # -- what is not for us -------------------------------------------------------------------------------
    "offer-from-another-server-is-ignored": Case(client(OFFER, OURS), {}, None, []),
    "forcerenew-is-unsupported": Case(client(9), {}, None, []),
    "reply-op-is-ignored": Case(server(DISCOVER), {}, None, []),
    "bootp-without-message-type-is-ignored": Case(DhcpMessage(op=BOOTREQUEST, xid=XID, chaddr=CHADDR), {}, None, []),
    "non-ethernet-hardware-is-ignored": Case(
        DhcpMessage(op=BOOTREQUEST, xid=XID, chaddr=CHADDR, htype=32, hlen=20, options=((53, b"\x01"),)),
        {},
        None,
        [],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_reply_and_lease_calls(case: Case) -> None:
    source = FakeLeaseSource(outcomes=case.outcomes)
    assert await answer(case.request, RACK, source) == case.reply
    assert source.calls == case.calls


@pytest.mark.parametrize(
    ("request_", "outcomes", "reason"),
    [
        (client(DISCOVER), {"offer": Unavailable("x")}, SilenceReason.SOURCE_UNAVAILABLE),
        (client(DISCOVER), {"offer": Timeout("x")}, SilenceReason.SOURCE_UNAVAILABLE),
        (client(DISCOVER), {"offer": NotFound("x")}, SilenceReason.NOT_FOUND),
        (client(DISCOVER), {"offer": Conflict("x")}, SilenceReason.CONFLICT),
        (client(DISCOVER), {"offer": BadRequest("x")}, SilenceReason.REFUSED),
        (client(INFORM, ciaddr=ip("10.20.0.7")), {"subnets": Unavailable("x")}, SilenceReason.SOURCE_UNAVAILABLE),
        (client(REQUEST, (54, packed("10.20.0.3")), (50, packed("10.20.0.9"))), {}, SilenceReason.OTHER_SERVER),
        (client(REQUEST), {}, SilenceReason.MALFORMED),
        (client(RELEASE, OURS, ciaddr=ip("10.20.0.9")), {"release": None}, SilenceReason.NO_REPLY_EXPECTED),
        (client(OFFER), {}, SilenceReason.UNSUPPORTED_TYPE),
        (server(DISCOVER), {}, SilenceReason.NOT_A_CLIENT_REQUEST),
    ],
)
async def test_silence_says_why(request_: DhcpMessage, outcomes: dict[str, object], reason: SilenceReason) -> None:
    decision = await decide(request_, RACK, FakeLeaseSource(outcomes=outcomes))
    assert isinstance(decision, Silence)
    assert decision.reason is reason


async def test_ack_for_a_lease_in_a_subnet_the_source_does_not_list_is_not_sent() -> None:
    source = FakeLeaseSource(outcomes={"renew": lease("10.50.0.9", subnet_id=9)})
    decision = await decide(client(REQUEST, ciaddr=ip("10.50.0.9")), RACK, source)
    assert decision == Silence(SilenceReason.NOT_FOUND, "lease 10.50.0.9 is in unknown subnet 9")


async def test_rack_defaults_fill_dns_and_ntp_only_where_the_subnet_has_none() -> None:
    rack = RackView(
        rack_id="rack-1",
        link_address=ip("10.20.0.2"),
        dns_servers=(ip("9.9.9.9"),),
        ntp_servers=(ip("10.0.0.123"), ip("10.0.0.124")),
    )
    local = await answer(client(DISCOVER), rack, FakeLeaseSource(outcomes={"offer": offer_of("10.20.0.100")}))
    remote = await answer(
        client(DISCOVER, giaddr=RELAY),
        rack,
        FakeLeaseSource(outcomes={"offer": offer_of("10.30.0.100", REMOTE)}),
    )
    assert local is not None and remote is not None
    assert (local.option(6), local.option(42)) == (packed("10.20.0.53"), packed("10.0.0.123", "10.0.0.124"))
    assert (remote.option(6), remote.option(42)) == (packed("9.9.9.9"), packed("10.0.0.123", "10.0.0.124"))


async def test_message_type_leads_and_relay_agent_information_closes_whatever_the_request_list_says() -> None:
    request = client(DISCOVER, (55, bytes([82, 67, 42, 54, 53, 6, 51, 1])), *PXE_BIOS, (82, AGENT_INFO))
    reply = await answer(request, RACK, FakeLeaseSource(outcomes={"offer": offer_of("10.20.0.100")}))
    assert reply is not None
    assert [code for code, _ in reply.options] == [53, 54, 51, 58, 59, 67, 42, 6, 1, 3, 15, 66, 82]
