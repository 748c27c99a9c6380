"""DHCPv4 messages as plain data (RFC 2131 header, RFC 2132 options): what the codec produces and consumes.

No I/O, no parsing here: ``codec.py`` turns bytes into these and back, ``policy.py`` decides replies from them.
Options keep their wire order; each option's value is its raw payload (overloaded ``file``/``sname`` space and
split options (RFC 3396) are already merged by the codec).
"""

from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from ipaddress import IPv4Address

BOOTREQUEST = 1
BOOTREPLY = 2
HTYPE_ETHERNET = 1
FLAG_BROADCAST = 0x8000
MAGIC_COOKIE = b"\x63\x82\x53\x63"
UNSPECIFIED = IPv4Address("0.0.0.0")


class MessageType(IntEnum):
    """Option 53."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    """The options metalbus reads or writes (others pass through the codec untouched)."""

    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS_SERVERS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    BROADCAST_ADDRESS = 28
    NTP_SERVERS = 42
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER_NAME = 66
    BOOTFILE_NAME = 67
    USER_CLASS = 77
    RELAY_AGENT_INFO = 82
    CLIENT_ARCHITECTURE = 93
    CLIENT_NDI = 94
    CLIENT_MACHINE_ID = 97
    IPXE_ENCAPSULATED = 175
    END = 255


class ClientArchitecture(IntEnum):
    """Option 93 values (RFC 4578 and the IANA registry) that metalbus distinguishes."""

    X86_BIOS = 0
    X86_EFI_IA32 = 6
    X86_64_EFI = 7
    X86_64_EFI_BC = 9
    ARM64_EFI = 11
    X86_64_EFI_HTTP = 16
    ARM64_EFI_HTTP = 19


_MESSAGE_TYPE = int(Option.MESSAGE_TYPE)
_MESSAGE_TYPES = {int(kind): kind for kind in MessageType}


@dataclass(frozen=True)
class DhcpMessage:
    """One DHCPv4 message. ``chaddr`` is the full 16-byte field; ``mac`` is its first ``hlen`` bytes."""

    op: int
    xid: int
    chaddr: bytes
    htype: int = HTYPE_ETHERNET
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = UNSPECIFIED
    yiaddr: IPv4Address = UNSPECIFIED
    siaddr: IPv4Address = UNSPECIFIED
    giaddr: IPv4Address = UNSPECIFIED
    sname: bytes = b""
    file: bytes = b""
    options: tuple[tuple[int, bytes], ...] = field(default_factory=tuple)

    @property
    def mac(self) -> bytes:
        return self.chaddr[: self.hlen]

    def option(self, code: int) -> bytes | None:
        """The payload of the first ``code`` option, or None."""
        for number, value in self.options:
            if number == code:
                return value
        return None

    @cached_property
    def message_type(self) -> MessageType | None:
        """Option 53 (asked several times per message: found once)."""
        value = self.option(_MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        return _MESSAGE_TYPES.get(value[0])

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)
