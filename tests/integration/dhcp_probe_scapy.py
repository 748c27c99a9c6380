"""Send one DHCPDISCOVER built by scapy and print scapy's reading of the OFFER as JSON (run inside a namespace).

scapy is the independent oracle: the request is crafted and the reply parsed without any metalbus code, so a
test asserting on this output checks rack-dhcp's wire format, not our codec against itself. Usage::

    dhcp_probe_scapy.py IFACE MAC [--arch N] [--vendor-class TEXT] [--timeout S]

Prints ``{"offer": null}`` when nothing answered within the timeout; exit status 0 either way.
"""

import argparse
import json
import secrets
import sys
from typing import Any

from scapy.all import conf, srp1
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

BROADCAST_FLAG = 0x8000


def discover(mac: str, architecture: int | None, vendor_class: str | None) -> Any:
    """A PXE-style DHCPDISCOVER: broadcast flag set, options 93 and 60 when given, no user class (77)."""
    options: list[Any] = [("message-type", "discover")]
    if architecture is not None:
        options.append(("pxe_client_architecture", architecture.to_bytes(2, "big")))
    if vendor_class is not None:
        options.append(("vendor_class_id", vendor_class.encode()))
    options += [("param_req_list", [1, 3, 6, 60, 66, 67]), "end"]
    chaddr = bytes.fromhex(mac.replace(":", ""))
    return (
        Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
        / IP(src="0.0.0.0", dst="255.255.255.255")
        / UDP(sport=68, dport=67)
        / BOOTP(chaddr=chaddr, xid=secrets.randbits(32), flags=BROADCAST_FLAG)
        / DHCP(options=options)
    )


def as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.rstrip(b"\0").decode("latin-1")
    return value if isinstance(value, int | float | str) else str(value)


def reading_of(reply: Any) -> dict[str, Any]:
    """The reply's header fields and options (by scapy's option names) in JSON-friendly form."""
    bootp = reply[BOOTP]
    options: dict[str, Any] = {}
    for option in reply[DHCP].options:
        if isinstance(option, tuple):
            name, *values = option
            options[str(name)] = as_text(values[0]) if len(values) == 1 else [as_text(v) for v in values]
    return {
        "xid": bootp.xid,
        "yiaddr": bootp.yiaddr,
        "siaddr": bootp.siaddr,
        "file": as_text(bootp.file),
        "chaddr": as_text(bootp.chaddr[:6].hex(":")),
        "options": options,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("iface")
    parser.add_argument("mac")
    parser.add_argument("--arch", type=int)
    parser.add_argument("--vendor-class")
    parser.add_argument("--timeout", type=float, default=5.0)
    arguments = parser.parse_args(argv)
    conf.checkIPaddr = False  # the OFFER comes from the server's address, not from 255.255.255.255
    conf.verb = 0
    request = discover(arguments.mac, arguments.arch, arguments.vendor_class)
    reply = srp1(request, iface=arguments.iface, timeout=arguments.timeout, retry=2)
    print(json.dumps({"offer": None if reply is None else reading_of(reply)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
