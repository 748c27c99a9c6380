"""Who holds a port: the kernel's socket tables (/proc/net/{tcp,udp}{,6}) and the processes owning those sockets.

``parse_socket_table`` and ``holds`` are pure (table text in, entries out); ``port_holders`` reads /proc.
"""

import os
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from metalbus.ports import Protocol

TCP_LISTEN = 0x0A
PROC = Path("/proc")
TABLES: dict[Protocol, tuple[str, ...]] = {Protocol.TCP: ("tcp", "tcp6"), Protocol.UDP: ("udp", "udp6")}


@dataclass(frozen=True)
class SocketEntry:
    """One row of a /proc/net socket table."""

    address: IPv4Address | IPv6Address
    port: int
    remote_port: int
    state: int
    inode: int


@dataclass(frozen=True)
class PortHolder:
    """A process holding a port; ``pid`` None when the socket's process is not visible to us (another user's)."""

    inode: int
    pid: int | None
    command: str


def decode_address(hex_address: str, byteorder: str = sys.byteorder) -> IPv4Address | IPv6Address:
    """The kernel prints an address as 32-bit words in host byte order: ``0100007F`` is 127.0.0.1 here."""
    raw = bytes.fromhex(hex_address)
    words = [raw[i : i + 4] for i in range(0, len(raw), 4)]
    ordered = b"".join(word[::-1] if byteorder == "little" else word for word in words)
    address = ip_address(ordered)
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_socket_table(text: str, byteorder: str = sys.byteorder) -> list[SocketEntry]:
    """The rows of /proc/net/{tcp,udp,tcp6,udp6} (the header line is skipped)."""
    entries: list[SocketEntry] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local_address, local_port = fields[1].split(":")
        remote_port = fields[2].split(":")[1]
        entries.append(
            SocketEntry(
                address=decode_address(local_address, byteorder),
                port=int(local_port, 16),
                remote_port=int(remote_port, 16),
                state=int(fields[3], 16),
                inode=int(fields[9]),
            )
        )
    return entries


def holds(entry: SocketEntry, protocol: Protocol, address: str, port: int) -> bool:
    """Whether ``entry`` stops us from binding ``address:port``: a listening TCP socket or an unconnected UDP
    one on that port, where either side is the wildcard address or both are the same address."""
    if entry.port != port:
        return False
    listening = entry.state == TCP_LISTEN if protocol is Protocol.TCP else entry.remote_port == 0
    if not listening:
        return False
    try:
        wanted = ip_address(address)
    except ValueError:  # a name, not an address: it may resolve to the entry's address
        return True
    return entry.address.is_unspecified or wanted.is_unspecified or entry.address == wanted


def socket_inodes(protocol: Protocol, address: str, port: int, proc: Path = PROC) -> set[int]:
    inodes: set[int] = set()
    for table in TABLES[protocol]:
        try:
            text = (proc / "net" / table).read_text()
        except OSError:
            continue
        inodes |= {entry.inode for entry in parse_socket_table(text) if holds(entry, protocol, address, port)}
    return inodes


def command_of(pid: int, proc: Path = PROC) -> str:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def owners_of(inodes: set[int], proc: Path = PROC) -> dict[int, int]:
    """inode → pid of a process with that socket open (walks /proc/<pid>/fd; unreadable processes are skipped)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, int] = {}
    for process in proc.iterdir():
        if not process.name.isdigit() or len(found) == len(wanted):
            continue
        try:
            descriptors = list((process / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target in wanted:
                found.setdefault(wanted[target], int(process.name))
    return found


def port_holders(protocol: Protocol, address: str, port: int, proc: Path = PROC) -> list[PortHolder]:
    """Every socket that holds ``address:port`` and, where visible, its process."""
    inodes = socket_inodes(protocol, address, port, proc)
    owners = owners_of(inodes, proc) if inodes else {}
    holders = []
    for inode in sorted(inodes):
        pid = owners.get(inode)
        holders.append(PortHolder(inode, pid, command_of(pid, proc) if pid is not None else "?"))
    return holders
