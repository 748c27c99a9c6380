"""What the fleet puts on the wire is read by the real parsers: DHCP frames, the signal form, OAuth headers, TFTP."""

import struct
from ipaddress import IPv4Address

import pytest

from metalbus.contracts.metadata import INVENTORY_RESULT_NAME, OAuthCredentials, SignalStatus
from metalbus.fleet.boot_config import MetadataAccess
from metalbus.fleet.commissioning import authorization, inventory_output, signal_body
from metalbus.fleet.packet_transport import dhcp_reply_in, gratuitous_arp, ipv4_checksum, udp_frame
from metalbus.fleet.profiles import machine_profile
from metalbus.fleet.syslog_sender import syslog_line
from metalbus.fleet.tftp_fetch import ACK, DATA, ERROR, OACK, TftpError, TftpTransfer, parse_options, read_request
from metalbus_rack_dhcp.codec import encode_message
from metalbus_rack_dhcp.messages import BOOTREPLY, DhcpMessage, MessageType, Option
from metalbus_rack_proxy.metadata_oauth import credentials_from_header
from metalbus_rack_proxy.metadata_signal_form import parse_form, signal_from_form
from metalbus_region.results_store import parse_inventory

ACCESS = MetadataAccess("http://10.0.0.2:5248/MAAS/metadata/", "ck", "tk", "s3cr3t")
ACCESS_CREDENTIALS = OAuthCredentials(consumer_key="ck", token_key="tk", token_secret="s3cr3t")
MAC = bytes.fromhex("020b00000001")


def test_a_udp_frame_has_a_valid_ip_header_and_reads_back_as_dhcp() -> None:
    message = DhcpMessage(
        op=BOOTREPLY, xid=7, chaddr=MAC + bytes(10), options=((Option.MESSAGE_TYPE, bytes((MessageType.OFFER,))),)
    )
    frame = udp_frame(
        encode_message(message),
        source_mac=b"\xaa" * 6,
        destination_mac=MAC,
        source=IPv4Address("10.0.0.2"),
        destination=IPv4Address("10.0.0.100"),
    )
    assert ipv4_checksum(frame[14:34]) == 0  # a correct header sums to 0xffff
    assert frame[0:6] == MAC and frame[6:12] == b"\xaa" * 6
    assert struct.unpack("!HH", frame[34:38]) == (68, 67)
    # The frame goes 68 → 67; a reply is the same bytes with the ports swapped.
    reply_frame = frame[:34] + struct.pack("!HH", 67, 68) + frame[38:]
    received = dhcp_reply_in(reply_frame)
    assert received is not None and received.message.xid == 7 and received.server_mac == b"\xaa" * 6
    assert dhcp_reply_in(frame) is None  # to the server's port: not a reply


def test_a_gratuitous_arp_names_the_address_as_sender_and_target() -> None:
    frame = gratuitous_arp(b"\xaa" * 6, IPv4Address("10.0.0.100"))
    assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"
    _, _, _, _, operation, sender_mac, sender_ip, _, target_ip = struct.unpack("!HHBBH6s4s6s4s", frame[14:42])
    assert (operation, sender_mac, sender_ip, target_ip) == (1, b"\xaa" * 6, bytes((10, 0, 0, 100)), sender_ip)


def test_the_rack_reads_the_oauth_header_as_the_machine_credentials() -> None:
    credentials = credentials_from_header(authorization(ACCESS))
    assert credentials == OAuthCredentials(consumer_key="ck", token_key="tk", token_secret="s3cr3t")


def test_the_rack_and_region_read_the_signal_as_the_inventory_the_machine_reported() -> None:
    inventory = machine_profile(3, 1).inventory
    body = signal_body("b-1", "WORKING", (INVENTORY_RESULT_NAME, 0, 2.0, inventory_output(inventory), ""))
    signal = signal_from_form(ACCESS_CREDENTIALS, parse_form("multipart/form-data; boundary=b-1", body))
    assert signal.status is SignalStatus.WORKING
    [result] = signal.results
    assert (result.name, result.exit_status, result.runtime_s) == (INVENTORY_RESULT_NAME, 0, 2.0)
    assert parse_inventory(result) == inventory


def test_the_final_signal_is_ok_without_results() -> None:
    signal = signal_from_form(
        ACCESS_CREDENTIALS, parse_form("multipart/form-data; boundary=b-2", signal_body("b-2", "OK"))
    )
    assert (signal.status, signal.results) == (SignalStatus.OK, [])


def test_a_read_request_asks_for_octet_mode_and_the_firmware_block_size() -> None:
    request = read_request("pxelinux.cfg/01-02-0b-00-00-00-01", 1468)
    assert request[:2] == b"\x00\x01"
    name, mode, *options = request[2:].split(b"\0")[:-1]
    assert (name, mode) == (b"pxelinux.cfg/01-02-0b-00-00-00-01", b"octet")
    assert parse_options(b"\0".join(options) + b"\0") == {"blksize": "1468", "tsize": "0"}


def test_a_transfer_acknowledges_every_block_once_and_again_when_repeated() -> None:
    transfer = TftpTransfer()
    assert transfer.take(struct.pack("!H", OACK) + b"blksize\x004\x00") == struct.pack("!HH", ACK, 0)
    assert transfer.take(struct.pack("!HH", DATA, 1) + b"abcd") == struct.pack("!HH", ACK, 1)
    assert transfer.take(struct.pack("!HH", DATA, 1) + b"abcd") == struct.pack("!HH", ACK, 1)  # our ACK was lost
    assert transfer.take(struct.pack("!HH", DATA, 3) + b"zz") is None  # out of order
    assert not transfer.done
    assert transfer.take(struct.pack("!HH", DATA, 2) + b"ef") == struct.pack("!HH", ACK, 2)
    assert transfer.done and bytes(transfer.received) == b"abcdef"


def test_an_error_packet_ends_the_transfer_with_its_message() -> None:
    with pytest.raises(TftpError, match="File not found"):
        TftpTransfer().take(struct.pack("!HH", ERROR, 1) + b"File not found\0")


def test_syslog_lines_are_rfc_3164_as_busybox_sends_them() -> None:
    line = syslog_line("sim-1", "metalbus-ephemeral", "started", when=0.0)
    assert line == b"<14>Jan  1 00:00:00 sim-1 metalbus-ephemeral: started"
