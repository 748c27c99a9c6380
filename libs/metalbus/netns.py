"""A network namespace seen from outside it: sockets opened inside it, addresses and routes set in it.

The fleet's virtual machines live in one; the embedded stack's further racks each run in one (their NATS relay
and readiness probes open sockets there).

A socket belongs to the namespace of the thread that created it, whatever thread uses it later; so each socket is
made in a short-lived thread that first joins the namespace (``setns``) and then ends, leaving the event loop's
threads where they were. ``ip -n <namespace>`` changes addresses, routes and links. ``namespace=None`` means the
process's own namespace (the command re-run inside one with ``ip netns exec``).
"""

import asyncio
import ctypes
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
IP_TIMEOUT_S = 10.0


class NamespaceError(Exception):
    """The namespace could not be entered, or an ``ip`` command failed."""


@dataclass(frozen=True)
class NetworkNamespace:
    name: str | None

    def open_socket(self, family: int, kind: int, protocol: int = 0) -> socket.socket:
        """A new socket inside the namespace (non-blocking)."""
        if self.name is None:
            made = socket.socket(family, kind, protocol)
            made.setblocking(False)
            return made
        made_inside: list[socket.socket] = []
        errors: list[BaseException] = []
        thread = threading.Thread(target=_make_socket, args=(self.name, family, kind, protocol, made_inside, errors))
        thread.start()
        thread.join()
        if errors:
            raise NamespaceError(f"cannot open a socket in namespace {self.name}: {errors[0]}") from errors[0]
        made_inside[0].setblocking(False)
        return made_inside[0]

    async def ip(self, *arguments: str, batch: str | None = None) -> str:
        """Run ``ip [-n namespace] <arguments>`` (with ``batch`` on its stdin); NamespaceError if it fails."""
        argv = ["ip", *(("-n", self.name) if self.name else ()), *arguments]
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if batch is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            stdin = batch.encode() if batch is not None else None
            output, _ = await asyncio.wait_for(process.communicate(stdin), IP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise NamespaceError(f"{' '.join(argv)} took over {IP_TIMEOUT_S} s") from None
        if process.returncode:
            raise NamespaceError(f"{' '.join(argv)}: {output.decode(errors='replace').strip()}")
        return output.decode(errors="replace")

    async def add_address(self, interface: str, address: str, route_to: str | None = None) -> None:
        """``address``/32 on ``interface``, and (same ``ip`` run) the route to ``route_to`` through it: the kernel
        drops an interface's routes whenever its last address goes, so the route is set again with each address."""
        commands = [f"addr replace {address}/32 dev {interface}"]
        if route_to is not None:
            commands.append(f"route replace {route_to} dev {interface}")
        await self.ip("-batch", "-", batch="\n".join(commands) + "\n")

    async def remove_address(self, interface: str, address: str) -> None:
        await self.ip("addr", "del", f"{address}/32", "dev", interface)


def _make_socket(
    name: str, family: int, kind: int, protocol: int, made: list[socket.socket], errors: list[BaseException]
) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = os.open(NETNS_DIR / name, os.O_RDONLY)
        try:
            if libc.setns(descriptor, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        finally:
            os.close(descriptor)
        made.append(socket.socket(family, kind, protocol))
    except BaseException as error:  # noqa: BLE001 — handed to the caller's thread
        errors.append(error)
