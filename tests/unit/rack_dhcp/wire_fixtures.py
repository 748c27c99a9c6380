"""DHCPv4 packets as they appear on the wire (UDP payloads), for the codec tests.

The client packets were captured with tcpdump (QEMU's filter-dump for iPXE) from the real programs named above
each constant, run in throw-away network namespaces on a veth pair, MAC 52:54:00:12:34:56. OVERLOADED_OFFER is
written by hand from RFC 2131 §4.1, RFC 2132 §9.3 and RFC 3396. Each option sits on its own line.
"""

MAC = bytes.fromhex("525400123456")


def wire(*fields: str) -> bytes:
    """Bytes from hex fields (spaces allowed), one field per line so that each can carry its comment."""
    return bytes.fromhex("".join(fields))


# ISC dhclient 4.4.3-P1 (Debian 12 isc-dhcp-client, default dhclient.conf, hostname node1).
DHCLIENT_DISCOVER = wire(
    "01 01 06 00 24768550 0000 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 00000000 00000000 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 01",  # 53 message type
    "0c 05 6e6f646531",  # 12 host name
    "37 0d 011c02030f06770c2c2f1a792a",  # 55 parameter request list
    "ff",  # end
    "00" * 34,  # padding
)

# BusyBox udhcpc 1.35.0 (Debian 12), `udhcpc -f -n -q -i <veth>`.
UDHCPC_DISCOVER = wire(
    "01 01 06 00 45ed3a08 0000 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 00000000 00000000 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 01",  # 53 message type
    "39 02 0240",  # 57 max message size
    "37 07 0103060c0f1c2a",  # 55 parameter request list
    "3c 0c 756468637020312e33352e30",  # 60 vendor class
    "3d 07 01525400123456",  # 61 client identifier
    "ff",  # end
    "00" * 20,  # padding
)

# iPXE (Debian 12 ipxe-qemu, git 36a4c85): the PXE ROM of a QEMU 7.2 e1000 NIC under SeaBIOS, booted with
# `-uuid 4c4c4544-0042-3510-8052-b7c04f4e3332`.
IPXE_DISCOVER = wire(
    "01 01 06 00 86ff927c 0004 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 00000000 00000000 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 01",  # 53 message type
    "39 02 05c0",  # 57 max message size
    "5d 02 0000",  # 93 client architecture
    "5e 03 010201",  # 94 client network interface
    "3c 20 505845436c69656e743a417263683a30303030303a554e44493a303032303031",  # 60 vendor class
    "4d 04 69505845",  # 77 user class
    "37 17 010306070c0f111a2b3c4243778081828384858687afcb",  # 55 parameter request list
    "af 30",  # 175 iPXE encapsulated options
    "b105018086100eeb0301000017010122010113010111010127010119010129010110010221010115",
    "0101180101120101",
    "3d 07 01525400123456",  # 61 client identifier
    "61 11 0044454c4c420010358052b7c04f4e3332",  # 97 client machine id
    "ff",  # end
)

# The same iPXE's REQUEST after the OFFER below: adds server identifier (54) and requested address (50).
IPXE_REQUEST = wire(
    "01 01 06 00 86ff927c 0012 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 00000000 00000000 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 03",  # 53 message type
    "39 02 05c0",  # 57 max message size
    "5d 02 0000",  # 93 client architecture
    "5e 03 010201",  # 94 client network interface
    "3c 20 505845436c69656e743a417263683a30303030303a554e44493a303032303031",  # 60 vendor class
    "4d 04 69505845",  # 77 user class
    "37 17 010306070c0f111a2b3c4243778081828384858687afcb",  # 55 parameter request list
    "af 30",  # 175 iPXE encapsulated options
    "b105018086100eeb0301000017010122010113010111010127010119010129010110010221010115",
    "0101180101120101",
    "3d 07 01525400123456",  # 61 client identifier
    "61 11 0044454c4c420010358052b7c04f4e3332",  # 97 client machine id
    "36 04 0a000202",  # 54 server identifier
    "32 04 0a00020f",  # 50 requested address
    "ff",  # end
)

# QEMU 7.2 user-mode networking (slirp) answering IPXE_DISCOVER: a server reply, zero-padded to 548 bytes.
SLIRP_OFFER = wire(
    "02 01 06 00 86ff927c 0000 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 0a00020f 0a000202 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 02",  # 53 message type
    "36 04 0a000202",  # 54 server identifier
    "01 04 ffffff00",  # 1 subnet mask
    "33 04 00015180",  # 51 lease time
    "ff",  # end
    "00" * 286,  # padding
)

# UDHCPC_DISCOVER forwarded by ISC dhcrelay 4.4.3-P1 `-a`: hops 1, giaddr 10.20.0.1, option 82 circuit id = the
# relay's interface name.
RELAYED_DISCOVER = wire(
    "01 01 06 01 fe81f40b 0000 0000",  # op, htype, hlen, hops, xid, secs, flags
    "00000000 00000000 00000000 0a140001",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "00" * 192,  # sname, file
    "63825363",  # magic cookie
    "35 01 01",  # 53 message type
    "39 02 0240",  # 57 max message size
    "37 07 0103060c0f1c2a",  # 55 parameter request list
    "3c 0c 756468637020312e33352e30",  # 60 vendor class
    "3d 07 01525400123456",  # 61 client identifier
    "52 0b 01096d6272323734383962",  # 82 relay agent information
    "ff",  # end
    "00" * 7,  # padding
)

# Hand-written: an OFFER whose options continue in `file` then `sname` (option 52 = 3), with option 43 split
# between the options field and `file` (RFC 3396: the pieces are concatenated in options → file → sname order).
OVERLOADED_OFFER = wire(
    "02 01 06 00 86ff927c 0000 8000",  # op, htype, hlen, hops, xid, secs, flags (broadcast)
    "00000000 0a00020f 0a000202 00000000",  # ciaddr, yiaddr, siaddr, giaddr
    "525400123456 00000000000000000000",  # chaddr
    "42 08 31302e302e322e32",  # sname: 66 TFTP server name "10.0.2.2"
    "ff",  # sname: end
    "00" * 53,  # sname: padding to 64 bytes
    "01 04 ffffff00",  # file: 1 subnet mask
    "2b 03 040506",  # file: 43 vendor specific, second piece
    "33 04 00015180",  # file: 51 lease time
    "ff",  # file: end
    "00" * 110,  # file: padding to 128 bytes
    "63825363",  # magic cookie
    "35 01 02",  # 53 message type OFFER
    "36 04 0a000202",  # 54 server identifier
    "34 01 03",  # 52 option overload: file and sname
    "2b 03 010203",  # 43 vendor specific, first piece
    "ff",  # end
    "00" * 42,  # padding to 300 bytes
)

CAPTURED = {
    "dhclient discover": DHCLIENT_DISCOVER,
    "udhcpc discover": UDHCPC_DISCOVER,
    "ipxe discover": IPXE_DISCOVER,
    "ipxe request": IPXE_REQUEST,
    "slirp offer": SLIRP_OFFER,
    "relayed discover": RELAYED_DISCOVER,
}
ALL_FIXTURES = {**CAPTURED, "overloaded offer": OVERLOADED_OFFER}
