"""Syslog lines from a machine to its rack, as busybox syslogd forwards them (``-R host:port``): RFC 3164 over UDP.

``<PRI>Mmm dd hh:mm:ss hostname tag: message`` (PRI = facility * 8 + severity; the day padded with a space), one
datagram per line, from the machine's own address. Lost datagrams are lost (UDP syslog has no retries).
"""

import socket
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from metalbus.netns import NetworkNamespace

FACILITY_USER = 1
FACILITY_DAEMON = 3
SEVERITY_INFO = 6
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def syslog_line(hostname: str, tag: str, message: str, *, when: float | None = None, facility: int = FACILITY_USER,
                severity: int = SEVERITY_INFO) -> bytes:  # fmt: skip
    moment = time.gmtime(time.time() if when is None else when)
    stamp = (
        f"{MONTHS[moment.tm_mon - 1]} {moment.tm_mday:2d} {moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d}"
    )
    return f"<{facility * 8 + severity}>{stamp} {hostname} {tag}: {message}".encode()


@dataclass
class SyslogSender:
    namespace: NetworkNamespace
    local_address: IPv4Address
    destination: tuple[IPv4Address, int]
    hostname: str
    sent: int = 0
    _socket: socket.socket | None = field(default=None, repr=False)

    def send(self, tag: str, message: str) -> None:
        if self._socket is None:
            self._socket = self.namespace.open_socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.bind((str(self.local_address), 0))
        try:
            self._socket.sendto(
                syslog_line(self.hostname, tag, message), (str(self.destination[0]), self.destination[1])
            )
        except (BlockingIOError, ConnectionRefusedError):
            return  # dropped, as a full queue or an ICMP "port unreachable" drops UDP syslog
        self.sent += 1

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
