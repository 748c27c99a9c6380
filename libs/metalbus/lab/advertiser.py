"""The lab's link announcements, once a second: router advertisements on the bridge, LLDP on each VM's tap.

The RA carries no M/O flag, router lifetime 0 and no prefix: it tells iPXE there is nothing to configure (iPXE
otherwise waits ~13 s for IPv6 autoconfiguration) and changes nothing else on the link. The LLDP frames make the
lab's "switch" (system name given on the command line) each VM's neighbour, port = the VM's tap. Run inside the
lab namespace until SIGTERM:
``python -m metalbus.lab.advertiser <bridge> <system name> <tap>=<vm name>...``.
Sends fail harmlessly while a link is not ready (no link-local address yet, tap not yet opened by its qemu).
"""

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from metalbus.lab.lldp import ETHERTYPE_LLDP, lldp_frame

ROUTER_ADVERTISEMENT = bytes([134, 0, 0, 0, 64, 0, 0, 0]) + bytes(8)
"""ICMPv6 type 134, hop limit 64, no flags, router lifetime 0, no options (the kernel fills the checksum)."""
ALL_NODES = "ff02::1"
INTERVAL_S = 1.0


def interface_mac(interface: str) -> bytes:
    return bytes.fromhex(Path(f"/sys/class/net/{interface}/address").read_text().strip().replace(":", ""))


Send = Callable[[], object]


def router_advertiser(stack: contextlib.ExitStack, bridge: str) -> Send:
    index = socket.if_nametoindex(bridge)
    sock = stack.enter_context(socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    return lambda: sock.sendto(ROUTER_ADVERTISEMENT, (ALL_NODES, 0, 0, index))


def lldp_sender(stack: contextlib.ExitStack, tap: str, vm_name: str, system_name: str) -> Send:
    sock = stack.enter_context(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE_LLDP)))
    sock.bind((tap, 0))
    frame = lldp_frame(interface_mac(tap), tap, f"lab port of {vm_name}", system_name)
    return lambda: sock.send(frame)


def announce(bridge: str, system_name: str, taps: dict[str, str], stop: threading.Event) -> None:
    with contextlib.ExitStack() as stack:
        senders = [router_advertiser(stack, bridge)]
        senders += [lldp_sender(stack, tap, vm_name, system_name) for tap, vm_name in taps.items()]
        while not stop.is_set():
            for send in senders:
                with contextlib.suppress(OSError):
                    send()
            stop.wait(INTERVAL_S)


def main() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    bridge, system_name, *pairs = sys.argv[1:]
    announce(bridge, system_name, dict(pair.split("=", 1) for pair in pairs), stop)


if __name__ == "__main__":
    main()
