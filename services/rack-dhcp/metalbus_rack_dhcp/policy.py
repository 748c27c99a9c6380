"""What rack-dhcp answers to one DHCPv4 request, given the rack's view of its link and a source of leases.

No sockets, no clock, no logging: ``decide`` turns a request into a reply or a ``Silence`` with its reason;
``answer`` is the same with the reason dropped. The lease source is a Protocol (the region client and the rack's
local cache both implement it) whose typed errors (``metalbus.contracts.errors``) steer the answer:

============================  =================================  ==============================================
source raises                 DISCOVER / RELEASE / DECLINE        REQUEST
============================  =================================  ==============================================
Conflict                      silence (no address for the MAC)   NAK
NotFound                      silence (not our link / client)    silence; NAK when renewing (RENEW's contract:
                                                                 the MAC holds no binding of ciaddr any more)
Unavailable, Timeout          silence: the client retransmits, and by then the region (or the cache) may answer
any other MetalbusError       silence
============================  =================================  ==============================================

REQUEST follows RFC 2131 §4.3.2: SELECTING (option 54 present) is ours only if 54 is the rack's address, else we
stay silent and leave the offer to expire (another rack of the same region may be the one committing it);
INIT-REBOOT (option 50, no 54) gets a NAK for an address off the link's subnet, else a commit; RENEWING and
REBINDING (ciaddr, no 50) renew ciaddr. Replies copy xid, chaddr, flags, giaddr and hops; a NAK to a relayed
request also sets the broadcast flag (§4.3.2) so the relay broadcasts it.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Protocol

from metalbus.contracts.boot import RACK_HTTP_PORT
from metalbus.contracts.errors import Conflict, MetalbusError, NotFound, Timeout, Unavailable
from metalbus.contracts.leases import (
    Lease,
    LeaseCommitRequest,
    LeaseOffer,
    LeaseOfferRequest,
    LeaseReleaseRequest,
    Subnet,
)
from metalbus_rack_dhcp.boot_files import BootChoice, choose_boot, read_boot_client
from metalbus_rack_dhcp.codec import encode_ipv4_list, encode_u32
from metalbus_rack_dhcp.messages import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    HTYPE_ETHERNET,
    UNSPECIFIED,
    DhcpMessage,
    MessageType,
    Option,
)

HTTP_PORT = RACK_HTTP_PORT


class LeaseSource(Protocol):
    """What the policy needs from the region (or from the rack's cache while the region is away)."""

    async def offer(self, request: LeaseOfferRequest) -> LeaseOffer: ...

    async def commit(self, request: LeaseCommitRequest) -> Lease: ...

    async def renew(self, request: LeaseCommitRequest) -> Lease: ...

    async def release(self, request: LeaseReleaseRequest) -> object: ...

    async def decline(self, request: LeaseReleaseRequest) -> object: ...

    async def subnets(self) -> Sequence[Subnet]:
        """Every subnet the source knows: describes ACKed leases (by id) and INFORM / INIT-REBOOT links."""
        ...


@dataclass(frozen=True)
class RackView:
    """The rack as seen from the link a request arrived on."""

    rack_id: str
    link_address: IPv4Address
    """The rack's address on that link: server identifier (54), next-server (siaddr, 66), boot URLs."""
    http_port: int = HTTP_PORT
    dns_servers: tuple[IPv4Address, ...] | None = None
    """Option 6 for subnets without DNS servers; None: the rack itself (rack-proxy answers DNS)."""
    ntp_servers: tuple[IPv4Address, ...] | None = None
    """Option 42 (subnets carry no NTP); None: the rack itself (its host's chrony)."""

    def dns_for(self, subnet: Subnet) -> tuple[IPv4Address, ...]:
        if subnet.dns_servers:
            return tuple(subnet.dns_servers)
        return (self.link_address,) if self.dns_servers is None else self.dns_servers

    def ntp(self) -> tuple[IPv4Address, ...]:
        return (self.link_address,) if self.ntp_servers is None else self.ntp_servers


class SilenceReason(StrEnum):
    NOT_A_CLIENT_REQUEST = "not_a_client_request"
    UNSUPPORTED_TYPE = "unsupported_type"
    MALFORMED = "malformed"
    OTHER_SERVER = "other_server"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    SOURCE_UNAVAILABLE = "source_unavailable"
    REFUSED = "refused"
    NO_REPLY_EXPECTED = "no_reply_expected"


@dataclass(frozen=True)
class Silence:
    """No reply; ``reason`` is for the server's counters and debug log."""

    reason: SilenceReason
    detail: str = ""


Decision = DhcpMessage | Silence
Handler = Callable[[DhcpMessage, RackView, LeaseSource], Awaitable[Decision]]


async def answer(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> DhcpMessage | None:
    """The reply to send, or None to send nothing."""
    decision = await decide(message, rack, leases)
    return decision if isinstance(decision, DhcpMessage) else None


async def decide(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    """The reply to send, or why there is none."""
    if message.op != BOOTREQUEST or message.htype != HTYPE_ETHERNET or message.hlen != 6:
        return Silence(SilenceReason.NOT_A_CLIENT_REQUEST)
    handler = _HANDLERS.get(message.message_type) if message.message_type is not None else None
    if handler is None:
        return Silence(SilenceReason.UNSUPPORTED_TYPE, f"message type {message.option(Option.MESSAGE_TYPE)!r}")
    try:
        return await handler(message, rack, leases)
    except (Unavailable, Timeout) as error:
        return Silence(SilenceReason.SOURCE_UNAVAILABLE, error.message)
    except NotFound as error:
        return Silence(SilenceReason.NOT_FOUND, error.message)
    except Conflict as error:
        return Silence(SilenceReason.CONFLICT, error.message)
    except MetalbusError as error:
        return Silence(SilenceReason.REFUSED, f"{error.code}: {error.message}")


# -- the message types --------------------------------------------------------------------------------------


async def _discover(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    offer = await leases.offer(
        LeaseOfferRequest(
            rack_id=rack.rack_id,
            mac=mac_text(message),
            link_address=link_address(message, rack),
            requested_ip=_address_option(message, Option.REQUESTED_IP),
            hostname=_client_hostname(message),
        )
    )
    return _configured_reply(message, rack, MessageType.OFFER, offer.subnet, offer.lease)


async def _request(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    server_id = message.option(Option.SERVER_ID)
    requested = _address_option(message, Option.REQUESTED_IP)
    if server_id is not None:
        if server_id != rack.link_address.packed:
            return Silence(SilenceReason.OTHER_SERVER, f"selected server {server_id.hex()}")
        if requested is None:
            return Silence(SilenceReason.MALFORMED, "SELECTING request without a requested address")
        return await _commit(message, rack, leases, requested)
    if requested is not None:
        return await _init_reboot(message, rack, leases, requested)
    if message.ciaddr != UNSPECIFIED:
        return await _renew(message, rack, leases)
    return Silence(SilenceReason.MALFORMED, "REQUEST with neither server id, requested address nor ciaddr")


async def _init_reboot(message: DhcpMessage, rack: RackView, leases: LeaseSource, requested: IPv4Address) -> Decision:
    link = link_address(message, rack)
    subnet = managed_subnet_containing(await leases.subnets(), link)
    if subnet is None:
        return Silence(SilenceReason.NOT_FOUND, f"no managed subnet holds link address {link}")
    if requested not in subnet.cidr:
        return _nak(message, rack, f"{requested} is not on this network ({subnet.cidr})")
    return await _commit(message, rack, leases, requested)


async def _commit(message: DhcpMessage, rack: RackView, leases: LeaseSource, address: IPv4Address) -> Decision:
    try:
        lease = await leases.commit(_commit_request(message, rack, address))
    except Conflict as error:
        return _nak(message, rack, error.message)
    return await _ack(message, rack, leases, lease)


async def _renew(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    try:
        lease = await leases.renew(_commit_request(message, rack, message.ciaddr))
    except (Conflict, NotFound) as error:
        return _nak(message, rack, error.message)
    return await _ack(message, rack, leases, lease)


async def _ack(message: DhcpMessage, rack: RackView, leases: LeaseSource, lease: Lease) -> Decision:
    subnet = next((subnet for subnet in await leases.subnets() if subnet.subnet_id == lease.subnet_id), None)
    if subnet is None:
        return Silence(SilenceReason.NOT_FOUND, f"lease {lease.ip} is in unknown subnet {lease.subnet_id}")
    return _configured_reply(message, rack, MessageType.ACK, subnet, lease)


async def _inform(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    if message.ciaddr == UNSPECIFIED:
        return Silence(SilenceReason.MALFORMED, "INFORM without ciaddr")
    subnet = managed_subnet_containing(await leases.subnets(), message.ciaddr)
    if subnet is None:
        return Silence(SilenceReason.NOT_FOUND, f"no managed subnet holds {message.ciaddr}")
    return _configured_reply(message, rack, MessageType.ACK, subnet, None)


async def _release(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    if not _addressed_to_us(message, rack):
        return Silence(SilenceReason.OTHER_SERVER)
    if message.ciaddr == UNSPECIFIED:
        return Silence(SilenceReason.MALFORMED, "RELEASE without ciaddr")
    await leases.release(LeaseReleaseRequest(rack_id=rack.rack_id, mac=mac_text(message), ip=message.ciaddr))
    return Silence(SilenceReason.NO_REPLY_EXPECTED)


async def _decline(message: DhcpMessage, rack: RackView, leases: LeaseSource) -> Decision:
    if not _addressed_to_us(message, rack):
        return Silence(SilenceReason.OTHER_SERVER)
    declined = _address_option(message, Option.REQUESTED_IP)
    if declined is None:
        return Silence(SilenceReason.MALFORMED, "DECLINE without a requested address")
    await leases.decline(LeaseReleaseRequest(rack_id=rack.rack_id, mac=mac_text(message), ip=declined))
    return Silence(SilenceReason.NO_REPLY_EXPECTED)


_HANDLERS: dict[MessageType, Handler] = {
    MessageType.DISCOVER: _discover,
    MessageType.REQUEST: _request,
    MessageType.INFORM: _inform,
    MessageType.RELEASE: _release,
    MessageType.DECLINE: _decline,
}


# -- reading requests ---------------------------------------------------------------------------------------


def mac_text(message: DhcpMessage) -> str:
    return message.mac.hex(":")


def link_address(message: DhcpMessage, rack: RackView) -> IPv4Address:
    """The address that selects the client's subnet: the relay's (giaddr) or the rack's on the receiving link."""
    return message.giaddr if message.giaddr != UNSPECIFIED else rack.link_address


def managed_subnet_containing(subnets: Sequence[Subnet], address: IPv4Address) -> Subnet | None:
    return next((subnet for subnet in subnets if subnet.managed and address in subnet.cidr), None)


def _address_option(message: DhcpMessage, code: Option) -> IPv4Address | None:
    value = message.option(code)
    return IPv4Address(value) if value is not None and len(value) == 4 else None


def _client_hostname(message: DhcpMessage) -> str | None:
    value = (message.option(Option.HOSTNAME) or b"").rstrip(b"\x00")
    try:
        return value.decode("ascii") or None
    except UnicodeDecodeError:
        return None


def _addressed_to_us(message: DhcpMessage, rack: RackView) -> bool:
    """RELEASE and DECLINE name their server in option 54; one naming another server is not ours to act on."""
    server_id = message.option(Option.SERVER_ID)
    return server_id is None or server_id == rack.link_address.packed


def _commit_request(message: DhcpMessage, rack: RackView, address: IPv4Address) -> LeaseCommitRequest:
    return LeaseCommitRequest(
        rack_id=rack.rack_id, mac=mac_text(message), ip=address, hostname=_client_hostname(message)
    )


# -- building replies ---------------------------------------------------------------------------------------


def _configured_reply(
    message: DhcpMessage, rack: RackView, kind: MessageType, subnet: Subnet, lease: Lease | None
) -> DhcpMessage:
    """OFFER or ACK: with a lease, its address and times; without one (INFORM), configuration only."""
    boot = choose_boot(read_boot_client(message), rack.link_address, rack.http_port)
    mandatory: list[tuple[int, bytes]] = [
        (Option.MESSAGE_TYPE, bytes([kind])),
        (Option.SERVER_ID, rack.link_address.packed),
    ]
    if lease is not None:
        mandatory += lease_time_options(subnet.lease_time_s)
    optional = _subnet_options(subnet, rack) | _boot_options(boot)
    if lease is not None and lease.hostname:
        optional[Option.HOSTNAME] = lease.hostname.encode()
    return _reply(
        message,
        flags=message.flags,
        ciaddr=message.ciaddr if kind is MessageType.ACK else UNSPECIFIED,
        yiaddr=lease.ip if lease is not None else UNSPECIFIED,
        siaddr=rack.link_address if boot is not None else UNSPECIFIED,
        file=boot.file.encode() if boot is not None else b"",
        options=ordered_options(message, mandatory, optional),
    )


def _nak(message: DhcpMessage, rack: RackView, reason: str) -> DhcpMessage:
    mandatory: list[tuple[int, bytes]] = [
        (Option.MESSAGE_TYPE, bytes([MessageType.NAK])),
        (Option.SERVER_ID, rack.link_address.packed),
        (Option.MESSAGE, reason.encode("ascii", "replace")[:255]),
    ]
    relayed = message.giaddr != UNSPECIFIED
    return _reply(
        message,
        flags=(message.flags | FLAG_BROADCAST) if relayed else message.flags,
        ciaddr=UNSPECIFIED,
        yiaddr=UNSPECIFIED,
        siaddr=UNSPECIFIED,
        file=b"",
        options=ordered_options(message, mandatory, {}),
    )


def _reply(
    message: DhcpMessage,
    *,
    flags: int,
    ciaddr: IPv4Address,
    yiaddr: IPv4Address,
    siaddr: IPv4Address,
    file: bytes,
    options: tuple[tuple[int, bytes], ...],
) -> DhcpMessage:
    return DhcpMessage(
        op=BOOTREPLY,
        xid=message.xid,
        chaddr=message.chaddr,
        htype=message.htype,
        hlen=message.hlen,
        hops=message.hops,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=message.giaddr,
        file=file,
        options=options,
    )


def lease_time_options(lease_time_s: int) -> list[tuple[int, bytes]]:
    """51, 58 (T1 = 0.5 of the lease) and 59 (T2 = 0.875), RFC 2131 §4.4.5's defaults."""
    return [
        (Option.LEASE_TIME, encode_u32(lease_time_s)),
        (Option.RENEWAL_TIME, encode_u32(lease_time_s // 2)),
        (Option.REBINDING_TIME, encode_u32(lease_time_s * 7 // 8)),
    ]


def _subnet_options(subnet: Subnet, rack: RackView) -> dict[int, bytes]:
    options = {int(Option.SUBNET_MASK): subnet.cidr.netmask.packed}
    if subnet.gateway is not None:
        options[Option.ROUTER] = subnet.gateway.packed
    if dns := rack.dns_for(subnet):
        options[Option.DNS_SERVERS] = encode_ipv4_list(dns)
    if subnet.domain:
        options[Option.DOMAIN_NAME] = subnet.domain.encode()
    if ntp := rack.ntp():
        options[Option.NTP_SERVERS] = encode_ipv4_list(ntp)
    return options


def _boot_options(boot: BootChoice | None) -> dict[int, bytes]:
    if boot is None:
        return {}
    options = {int(Option.BOOTFILE_NAME): boot.file.encode()}
    if boot.tftp_server_name is not None:
        options[Option.TFTP_SERVER_NAME] = boot.tftp_server_name.encode()
    if boot.vendor_class is not None:
        options[Option.VENDOR_CLASS] = boot.vendor_class
    if boot.ipxe_options is not None:
        options[Option.IPXE_ENCAPSULATED] = boot.ipxe_options
    return options


def ordered_options(
    message: DhcpMessage, mandatory: Sequence[tuple[int, bytes]], optional: dict[int, bytes]
) -> tuple[tuple[int, bytes], ...]:
    """Mandatory options first (53 leads), then the optional ones in the client's parameter request list order,
    then those it did not ask for by code (RFC 2131 §4.3.1 lets a server send them), then 82 echoed last
    (RFC 3046 §2.2: the server copies the relay agent information option into its reply)."""
    asked = [code for code in dict.fromkeys(message.option(Option.PARAMETER_REQUEST_LIST) or b"") if code in optional]
    unasked = sorted(code for code in optional if code not in asked)
    options = [*mandatory, *((code, optional[code]) for code in [*asked, *unasked])]
    relay_agent_information = message.option(Option.RELAY_AGENT_INFO)
    if relay_agent_information is not None:
        options.append((Option.RELAY_AGENT_INFO, relay_agent_information))
    return tuple((int(code), value) for code, value in options)
