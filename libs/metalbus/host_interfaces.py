"""The IPv4 addresses (with prefix) of this host's interfaces, as a rack reports them to the region.

``parse_ip_addr_json`` is pure (iproute2's ``ip -j -4 addr`` output → interfaces); ``detect`` runs the command.
Loopback is left out: it reaches no machine and no BMC.
"""

import json
import subprocess
from ipaddress import IPv4Interface


def parse_ip_addr_json(output: bytes) -> list[IPv4Interface]:
    found: list[IPv4Interface] = []
    for link in json.loads(output or b"[]"):
        if "LOOPBACK" in link.get("flags", []):
            continue
        for address in link.get("addr_info", []):
            if address.get("family") == "inet":
                found.append(IPv4Interface(f"{address['local']}/{address['prefixlen']}"))
    return found


def detect() -> list[IPv4Interface]:
    """This host's IPv4 interfaces; empty if iproute2 is missing or fails (the rack then reaches nothing)."""
    try:
        result = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_ip_addr_json(result.stdout)
