"""LLDP frames (IEEE 802.1AB) the lab sends to each VM from its tap, so the VM sees a switch as its neighbour.

Debian's lldpd is not among the packages the project installs, and a neighbour needs only a few TLVs: chassis
id (the tap's MAC), port id (the tap's name), TTL, port description, system name, system description. The
frames go to the nearest-bridge group address, which Linux bridges do not forward: each reaches one VM only.
"""

LLDP_MULTICAST = bytes.fromhex("0180c200000e")
ETHERTYPE_LLDP = 0x88CC
TTL_S = 120
CHASSIS_ID_MAC_ADDRESS = 4
PORT_ID_INTERFACE_NAME = 5
SYSTEM_DESCRIPTION = "metalbus lab switch"


def tlv(kind: int, value: bytes) -> bytes:
    """Type (7 bits) and length (9 bits), then the value."""
    if len(value) > 511:
        raise ValueError(f"LLDP TLV {kind} too long ({len(value)} bytes)")
    return ((kind << 9) | len(value)).to_bytes(2, "big") + value


def lldp_frame(source_mac: bytes, port: str, port_description: str, system_name: str) -> bytes:
    """A whole Ethernet frame carrying one LLDPDU."""
    pdu = b"".join(
        (
            tlv(1, bytes([CHASSIS_ID_MAC_ADDRESS]) + source_mac),
            tlv(2, bytes([PORT_ID_INTERFACE_NAME]) + port.encode()),
            tlv(3, TTL_S.to_bytes(2, "big")),
            tlv(4, port_description.encode()),
            tlv(5, system_name.encode()),
            tlv(6, SYSTEM_DESCRIPTION.encode()),
            tlv(0, b""),
        )
    )
    return LLDP_MULTICAST + source_mac + ETHERTYPE_LLDP.to_bytes(2, "big") + pdu
