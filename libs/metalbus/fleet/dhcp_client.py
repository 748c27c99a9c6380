"""One virtual machine's DHCP client as firmware runs it: DORA, retransmits, renewal at T1 (sans I/O, pure).

The client is driven by its owner: ``start`` gives the first DISCOVER, ``on_message`` takes a decoded reply,
``on_timeout`` is called once ``deadline`` has passed; each answers the message to send next (or None). Time is
whatever clock the owner passes in (``now``), so tests drive it without sockets or sleeping.

Retransmits follow RFC 2131 §4.1 (what PXE ROMs do): the first wait is 4 s, doubled on every retry up to 64 s,
each randomised by ±1 s; ``RetransmitPolicy.scale`` shrinks the whole schedule for simulations. After
``attempts`` sends without an answer the exchange gives up (FAILED). Retransmits keep the transaction id, with
``secs`` counting from the first DISCOVER. A NAK sends the client back to INIT with a new transaction id.
Once BOUND, at T1 (option 58, else half the lease) the client unicasts a REQUEST with ``ciaddr`` to its server
(RENEWING); at T2 (option 59, else 7/8 of the lease) it broadcasts it (REBINDING); at the lease's end it starts
over from INIT.
"""

import dataclasses
import random
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address
from uuid import UUID

from metalbus_rack_dhcp.codec import (
    DhcpDecodeError,
    decode_ipv4,
    decode_string,
    decode_u32,
    encode_client_architectures,
    encode_client_machine_id,
    encode_ipv4,
    encode_max_message_size,
    encode_parameter_request_list,
)
from metalbus_rack_dhcp.messages import (
    BOOTREPLY,
    BOOTREQUEST,
    FLAG_BROADCAST,
    UNSPECIFIED,
    DhcpMessage,
    MessageType,
    Option,
)

PXE_ARCHITECTURE_BIOS = 0
PXE_ARCHITECTURE_EFI_X64 = 7
REQUESTED_OPTIONS = (1, 3, 6, 12, 15, 28, 43, 60, 66, 67, 128, 129, 130, 131, 132, 133, 134, 135)
"""What a PXE ROM asks for (Intel's ROM's list)."""
NETWORK_INTERFACE_UNDI_2_1 = bytes((1, 2, 1))


class DhcpState(StrEnum):
    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    FAILED = "failed"


@dataclass(frozen=True)
class RetransmitPolicy:
    """How long firmware waits for an answer before sending again, and how often it tries."""

    first_timeout_s: float = 4.0
    max_timeout_s: float = 64.0
    jitter_s: float = 1.0
    attempts: int = 5
    scale: float = 1.0
    """Every wait is multiplied by this (0.1 turns 4 s, 8 s, … into 0.4 s, 0.8 s, …)."""

    def wait(self, attempt: int, chance: random.Random) -> float:
        """The wait after send number ``attempt`` (0 for the first send)."""
        base = min(self.first_timeout_s * 2**attempt, self.max_timeout_s)
        jittered = base + chance.uniform(-self.jitter_s, self.jitter_s)
        return float(max(jittered, self.first_timeout_s / 4) * self.scale)


@dataclass(frozen=True)
class Lease:
    address: IPv4Address
    server: IPv4Address
    subnet_mask: IPv4Address | None
    router: IPv4Address | None
    lease_time_s: float
    renewal_at: float
    rebinding_at: float
    expires_at: float
    boot_file: str
    next_server: IPv4Address


@dataclass(frozen=True)
class Outgoing:
    """A message to send; ``to_server`` is the server's address for a unicast renewal, None for broadcast."""

    message: DhcpMessage
    to_server: IPv4Address | None = None


class DhcpError(Exception):
    """The exchange gave up: no (acceptable) answer after every retransmit."""


class DhcpClient:
    """The DHCP state of one NIC; see the module's docstring for the protocol."""

    def __init__(
        self,
        mac: str,
        *,
        pxe_architecture: int,
        policy: RetransmitPolicy,
        chance: random.Random,
        machine_id: UUID,
        broadcast_flag: bool = False,
    ) -> None:
        self.mac = bytes.fromhex(mac.replace(":", ""))
        self.pxe_architecture = pxe_architecture
        self.policy = policy
        self.chance = chance
        self.machine_id = machine_id
        self.broadcast_flag = broadcast_flag
        self.state = DhcpState.INIT
        self.lease: Lease | None = None
        self.xid = 0
        self.deadline = float("inf")
        self.sends = 0
        self._exchange_started = 0.0
        self._offer: DhcpMessage | None = None

    # -- events ---------------------------------------------------------------------------------------------------

    def start(self, now: float) -> Outgoing:
        """Power on (or a NAK, or an expired lease): a new transaction, a DISCOVER."""
        self.state, self.lease, self._offer = DhcpState.SELECTING, None, None
        self._new_exchange(now)
        return self._send(now, self._discover(now))

    def on_message(self, message: DhcpMessage, now: float) -> Outgoing | None:
        """A reply for this MAC; ignored (None) unless it answers the current transaction in the current state."""
        if message.op != BOOTREPLY or message.xid != self.xid or message.mac != self.mac:
            return None
        kind = message.message_type
        if self.state is DhcpState.SELECTING and kind is MessageType.OFFER:
            self.state, self._offer = DhcpState.REQUESTING, message
            self._new_exchange(now)
            return self._send(now, self._request(now, message))
        waiting_for_ack = (DhcpState.REQUESTING, DhcpState.RENEWING, DhcpState.REBINDING)
        if self.state in waiting_for_ack and kind is MessageType.ACK:
            self._bind(message, now)
            return None
        if self.state in waiting_for_ack and kind is MessageType.NAK:
            return self.start(now)
        return None

    def on_timeout(self, now: float) -> Outgoing | None:
        """``deadline`` passed: retransmit, move on to renewing/rebinding, or give up (FAILED, None)."""
        if now < self.deadline:
            return None
        if self.state is DhcpState.BOUND:
            return self._renew(now, DhcpState.RENEWING)
        if self.state in (DhcpState.RENEWING, DhcpState.REBINDING):
            return self._keep_lease(now)
        if self.sends >= self.policy.attempts:
            self.state, self.deadline = DhcpState.FAILED, float("inf")
            return None
        message = self._discover(now) if self.state is DhcpState.SELECTING else self._request(now, self._offered())
        return self._send(now, message)

    # -- renewal --------------------------------------------------------------------------------------------------

    def _renew(self, now: float, state: DhcpState) -> Outgoing:
        self.state = state
        self._new_exchange(now)
        return self._send(now, self._renewal_request(now), to_server=state is DhcpState.RENEWING)

    def _keep_lease(self, now: float) -> Outgoing | None:
        lease = self._leased()
        if now >= lease.expires_at:
            return self.start(now)
        if self.state is DhcpState.RENEWING and now >= lease.rebinding_at:
            return self._renew(now, DhcpState.REBINDING)
        return self._send(now, self._renewal_request(now), to_server=self.state is DhcpState.RENEWING)

    # -- building messages ----------------------------------------------------------------------------------------

    def _new_exchange(self, now: float) -> None:
        self.xid = self.chance.getrandbits(32)
        self.sends = 0
        self._exchange_started = now

    def _send(self, now: float, message: DhcpMessage, *, to_server: bool = False) -> Outgoing:
        wait = self.policy.wait(self.sends, self.chance)
        self.sends += 1
        self.deadline = now + wait
        if self.state in (DhcpState.RENEWING, DhcpState.REBINDING):
            lease = self._leased()
            limit = lease.rebinding_at if self.state is DhcpState.RENEWING else lease.expires_at
            self.deadline = min(self.deadline, max(limit, now))
        return Outgoing(message, self._leased().server if to_server else None)

    def _base(self, now: float, kind: MessageType, extra: tuple[tuple[int, bytes], ...]) -> DhcpMessage:
        pxe_options = (
            (Option.MAX_MESSAGE_SIZE, encode_max_message_size(1464)),
            (Option.PARAMETER_REQUEST_LIST, encode_parameter_request_list(REQUESTED_OPTIONS)),
            (Option.CLIENT_ARCHITECTURE, encode_client_architectures([self.pxe_architecture])),
            (Option.CLIENT_NDI, NETWORK_INTERFACE_UNDI_2_1),
            (Option.CLIENT_MACHINE_ID, encode_client_machine_id(self.machine_id)),
            (Option.VENDOR_CLASS, self.vendor_class.encode()),
        )
        return DhcpMessage(
            op=BOOTREQUEST,
            xid=self.xid,
            chaddr=self.mac + bytes(10),
            secs=min(int(now - self._exchange_started), 0xFFFF),
            flags=FLAG_BROADCAST if self.broadcast_flag else 0,
            options=((Option.MESSAGE_TYPE, bytes((kind,))), *extra, *pxe_options),
        )

    @property
    def vendor_class(self) -> str:
        return f"PXEClient:Arch:{self.pxe_architecture:05d}:UNDI:002001"

    def _discover(self, now: float) -> DhcpMessage:
        return self._base(now, MessageType.DISCOVER, ())

    def _request(self, now: float, offer: DhcpMessage) -> DhcpMessage:
        server = offer.option(Option.SERVER_ID) or b""
        extra = ((Option.REQUESTED_IP, encode_ipv4(offer.yiaddr)), (Option.SERVER_ID, server))
        return self._base(now, MessageType.REQUEST, extra)

    def _renewal_request(self, now: float) -> DhcpMessage:
        message = self._base(now, MessageType.REQUEST, ())
        return dataclasses.replace(message, ciaddr=self._leased().address, flags=0)

    # -- the lease ------------------------------------------------------------------------------------------------

    def _bind(self, ack: DhcpMessage, now: float) -> None:
        self.lease = lease_from_ack(ack, now, self.lease)
        self.state, self.sends, self.deadline = DhcpState.BOUND, 0, self.lease.renewal_at

    def _offered(self) -> DhcpMessage:
        if self._offer is None:
            raise DhcpError("no offer to request")
        return self._offer

    def _leased(self) -> Lease:
        if self.lease is None:
            raise DhcpError("not bound to a lease")
        return self.lease


def lease_from_ack(ack: DhcpMessage, now: float, previous: Lease | None = None) -> Lease:
    """The lease an ACK grants, its T1/T2 as absolute times on the caller's clock."""
    try:
        lease_time = float(decode_u32(ack.option(Option.LEASE_TIME) or b""))
    except DhcpDecodeError as error:
        raise DhcpError(f"ACK without a usable lease time: {error}") from error
    renewal = _optional_u32(ack, Option.RENEWAL_TIME, lease_time / 2)
    rebinding = _optional_u32(ack, Option.REBINDING_TIME, lease_time * 7 / 8)
    server = _optional_address(ack, Option.SERVER_ID) or (previous.server if previous else ack.siaddr)
    boot_file = ack.file.rstrip(b"\x00").decode(errors="replace")
    if ack.option(Option.BOOTFILE_NAME):
        boot_file = decode_string(ack.option(Option.BOOTFILE_NAME) or b"")
    tftp_server = ack.option(Option.TFTP_SERVER_NAME)
    next_server = IPv4Address(decode_string(tftp_server)) if tftp_server else ack.siaddr
    return Lease(
        address=ack.yiaddr if ack.yiaddr != UNSPECIFIED else ack.ciaddr,
        server=server,
        subnet_mask=_optional_address(ack, Option.SUBNET_MASK),
        router=_optional_address(ack, Option.ROUTER),
        lease_time_s=lease_time,
        renewal_at=now + renewal,
        rebinding_at=now + rebinding,
        expires_at=now + lease_time,
        boot_file=boot_file,
        next_server=next_server if next_server != UNSPECIFIED else server,
    )


def _optional_u32(message: DhcpMessage, option: Option, default: float) -> float:
    value = message.option(option)
    return float(decode_u32(value)) if value is not None and len(value) == 4 else default


def _optional_address(message: DhcpMessage, option: Option) -> IPv4Address | None:
    value = message.option(option)
    return decode_ipv4(value[:4]) if value is not None and len(value) >= 4 else None
