"""The virtual firmware's DHCP client, driven by an injected clock: no sockets, no sleeping."""

import random
from ipaddress import IPv4Address
from uuid import UUID

import pytest

from metalbus.fleet.dhcp_client import (
    PXE_ARCHITECTURE_BIOS,
    PXE_ARCHITECTURE_EFI_X64,
    DhcpClient,
    DhcpState,
    Outgoing,
    RetransmitPolicy,
)
from metalbus_rack_dhcp.codec import (
    decode_client_architectures,
    decode_ipv4,
    decode_message,
    encode_ipv4,
    encode_message,
    encode_u32,
)
from metalbus_rack_dhcp.messages import BOOTREPLY, FLAG_BROADCAST, DhcpMessage, MessageType, Option

MAC = "02:0b:00:00:00:01"
SERVER = IPv4Address("10.20.0.2")
OFFERED = IPv4Address("10.20.0.100")
FIRMWARE = RetransmitPolicy()  # 4 s, 8 s, 16 s, 32 s, 64 s, each ±1 s


def client(
    policy: RetransmitPolicy = FIRMWARE, *, architecture: int = PXE_ARCHITECTURE_BIOS, seed: int = 1
) -> DhcpClient:
    return DhcpClient(
        MAC, pxe_architecture=architecture, policy=policy, chance=random.Random(seed), machine_id=UUID(int=1)
    )


def state_of(dhcp: DhcpClient) -> DhcpState:
    return dhcp.state


def on_the_wire(outgoing: Outgoing) -> DhcpMessage:
    """What the server would decode: the message through the real codec."""
    return decode_message(encode_message(outgoing.message))


def reply(request: DhcpMessage, kind: MessageType, *, lease_s: int = 600, t1_s: int | None = None) -> DhcpMessage:
    options: list[tuple[int, bytes]] = [(Option.MESSAGE_TYPE, bytes((kind,))), (Option.SERVER_ID, encode_ipv4(SERVER))]
    if kind is not MessageType.NAK:
        options += [(Option.LEASE_TIME, encode_u32(lease_s)), (Option.SUBNET_MASK, bytes((255, 255, 255, 0)))]
    if t1_s is not None:
        options.append((Option.RENEWAL_TIME, encode_u32(t1_s)))
    yiaddr = OFFERED if kind is not MessageType.NAK else IPv4Address("0.0.0.0")
    return DhcpMessage(
        op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, yiaddr=yiaddr, siaddr=SERVER,
        file=b"lpxelinux.0", options=tuple(options),
    )  # fmt: skip


def bound(dhcp: DhcpClient, now: float = 0.0, **lease: int) -> None:
    discover = on_the_wire(dhcp.start(now))
    request = dhcp.on_message(reply(discover, MessageType.OFFER), now + 0.1)
    assert request is not None
    assert dhcp.on_message(reply(on_the_wire(request), MessageType.ACK, **lease), now + 0.2) is None


@pytest.mark.parametrize("architecture", [PXE_ARCHITECTURE_BIOS, PXE_ARCHITECTURE_EFI_X64])
def test_a_discover_carries_the_firmware_architecture_in_option_93(architecture: int) -> None:
    discover = on_the_wire(client(architecture=architecture).start(0.0))
    assert discover.message_type is MessageType.DISCOVER
    assert decode_client_architectures(discover.option(Option.CLIENT_ARCHITECTURE) or b"") == (architecture,)
    assert (discover.option(Option.VENDOR_CLASS) or b"").startswith(b"PXEClient:Arch:0000")
    assert discover.mac == bytes.fromhex(MAC.replace(":", ""))


def test_retransmits_wait_4_8_16_32_seconds_with_a_second_of_jitter_then_give_up() -> None:
    dhcp = client()
    first = on_the_wire(dhcp.start(0.0))
    now, waits, sent = 0.0, [], [first]
    for _ in range(10):
        waits.append(dhcp.deadline - now)
        assert dhcp.on_timeout(dhcp.deadline - 0.01) is None  # not yet
        now = dhcp.deadline
        outgoing = dhcp.on_timeout(now)
        if outgoing is None:
            break
        sent.append(on_the_wire(outgoing))
    assert len(sent) == FIRMWARE.attempts and dhcp.state is DhcpState.FAILED
    for wait, base in zip(waits, (4, 8, 16, 32, 64), strict=True):
        assert base - 1 <= wait <= base + 1
    assert {message.xid for message in sent} == {first.xid}  # retransmits keep the transaction
    assert [message.secs for message in sent] == sorted(message.secs for message in sent)
    assert sent[-1].secs >= 4 + 8 + 16 + 32 - 4


def test_the_schedule_scales_for_simulations() -> None:
    dhcp = client(RetransmitPolicy(scale=0.1))
    dhcp.start(0.0)
    assert 0.3 <= dhcp.deadline <= 0.5


def test_an_offer_is_requested_from_its_server_and_an_ack_binds() -> None:
    dhcp = client()
    discover = on_the_wire(dhcp.start(0.0))
    request = dhcp.on_message(reply(discover, MessageType.OFFER), 1.0)
    assert request is not None and request.to_server is None  # SELECTING: broadcast
    sent = on_the_wire(request)
    assert sent.message_type is MessageType.REQUEST
    assert decode_ipv4(sent.option(Option.REQUESTED_IP) or b"") == OFFERED
    assert decode_ipv4(sent.option(Option.SERVER_ID) or b"") == SERVER
    dhcp.on_message(reply(sent, MessageType.ACK), 1.5)
    assert dhcp.state is DhcpState.BOUND and dhcp.lease is not None
    assert (dhcp.lease.address, dhcp.lease.boot_file, dhcp.lease.next_server) == (OFFERED, "lpxelinux.0", SERVER)
    assert dhcp.deadline == pytest.approx(1.5 + 300)  # T1: half the lease


def test_replies_to_other_transactions_or_macs_are_ignored() -> None:
    dhcp = client()
    discover = on_the_wire(dhcp.start(0.0))
    stranger = reply(discover, MessageType.OFFER)
    assert dhcp.on_message(DhcpMessage(**{**stranger.__dict__, "xid": discover.xid ^ 1}), 0.5) is None
    assert dhcp.on_message(DhcpMessage(**{**stranger.__dict__, "chaddr": bytes(16)}), 0.5) is None
    assert dhcp.state is DhcpState.SELECTING


def test_at_t1_the_lease_is_renewed_by_unicast_with_ciaddr_and_at_t2_rebound_by_broadcast() -> None:
    dhcp = client()
    bound(dhcp, lease_s=80, t1_s=40)
    assert dhcp.on_timeout(39.0) is None
    renewal = dhcp.on_timeout(dhcp.deadline)
    assert renewal is not None and renewal.to_server == SERVER and state_of(dhcp) is DhcpState.RENEWING
    assert on_the_wire(renewal).ciaddr == OFFERED and on_the_wire(renewal).option(Option.REQUESTED_IP) is None
    sent: list[tuple[DhcpState, Outgoing | None]] = []
    for _ in range(10):  # no answer: retransmit (unicast) until T2 (7/8 of 80 s), then broadcast
        sent.append((state_of(dhcp), dhcp.on_timeout(dhcp.deadline)))
        if state_of(dhcp) is DhcpState.REBINDING:
            break
    *renewing, (_, rebinding) = sent
    assert renewing and all(outgoing and outgoing.to_server == SERVER for _, outgoing in renewing)
    assert state_of(dhcp) is DhcpState.REBINDING and rebinding is not None and rebinding.to_server is None
    assert dhcp.deadline <= 0.2 + 80
    dhcp.on_message(reply(on_the_wire(rebinding), MessageType.ACK, lease_s=80), 75.0)
    assert state_of(dhcp) is DhcpState.BOUND and dhcp.deadline == pytest.approx(75.0 + 40)


def test_a_nak_starts_over_with_a_new_transaction() -> None:
    dhcp = client()
    discover = on_the_wire(dhcp.start(0.0))
    request = dhcp.on_message(reply(discover, MessageType.OFFER), 0.1)
    assert request is not None
    again = dhcp.on_message(reply(on_the_wire(request), MessageType.NAK), 0.2)
    assert again is not None and on_the_wire(again).message_type is MessageType.DISCOVER
    assert again.message.xid != discover.xid and dhcp.state is DhcpState.SELECTING


def test_firmware_that_asks_for_broadcast_replies_sets_the_flag() -> None:
    dhcp = DhcpClient(
        MAC, pxe_architecture=0, policy=FIRMWARE, chance=random.Random(1), machine_id=UUID(int=1), broadcast_flag=True
    )
    assert on_the_wire(dhcp.start(0.0)).flags & FLAG_BROADCAST
