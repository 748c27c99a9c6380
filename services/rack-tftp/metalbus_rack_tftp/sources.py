"""What the rack's TFTP and HTTP servers serve: a file source answers a requested path with an open file, or refuses.

Both servers ask the same chain of sources (per-machine boot configs rendered from the region's answer first,
then static bootloader files from the boot root), so a file reads the same over TFTP and over HTTP. A source
receives the path exactly as the client sent it (TFTP filename or URL path without the leading ``/`` and without
the query string) plus who asked; confinement of static paths to the boot root is the static source's job.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol


class RefusalReason(StrEnum):
    NOT_FOUND = "not-found"
    """No such file (TFTP error 1, HTTP 404)."""
    ACCESS_VIOLATION = "access-violation"
    """Outside the boot root, a NUL byte, an over-long name, a symlink out (TFTP error 2, HTTP 403)."""
    UNAVAILABLE = "unavailable"
    """The file depends on the region and the region cannot give it (TFTP error 0, HTTP 503)."""
    REGION_SILENT = "region-silent"
    """The file depends on the region and no answer came (NATS or every replica away, the database down): TFTP
    says nothing, so the loader sends its request again a second later, when the region may be back, instead
    of moving on to its next config name; HTTP 503 with Retry-After."""


TRANSIENT_REFUSALS = frozenset({RefusalReason.UNAVAILABLE, RefusalReason.REGION_SILENT})
"""Refusals a stale cached answer may stand in for."""


class FileRefused(Exception):
    """A source will not serve this path; servers turn it into a TFTP error packet or an HTTP status."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Requester:
    """Who asked: the client's address and port, and the rack address it reached (a boot config's URLs use it)."""

    client_address: str
    client_port: int
    local_address: str
    protocol: Literal["tftp", "http"]


class OpenedFile(Protocol):
    """A file ready to be sent: its exact size (TFTP tsize, HTTP Content-Length) and random-access reads."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; fewer only at the end of the file."""
        ...

    def close(self) -> None: ...


class FileSource(Protocol):
    async def open(self, path: str, requester: Requester) -> OpenedFile:
        """The file at ``path``, or raise ``FileRefused``."""
        ...


@dataclass(frozen=True)
class MemoryFile:
    """A rendered file held in memory (boot configs are a few hundred bytes)."""

    content: bytes

    @property
    def size(self) -> int:
        return len(self.content)

    def read(self, offset: int, length: int) -> bytes:
        return self.content[offset : offset + length]

    def close(self) -> None:
        return None


class FirstThatServes:
    """A chain of sources: the first that does not answer NOT_FOUND wins (other refusals end the search)."""

    def __init__(self, sources: Sequence[FileSource]) -> None:
        self._sources = tuple(sources)

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        for source in self._sources:
            try:
                return await source.open(path, requester)
            except FileRefused as refusal:
                if refusal.reason is not RefusalReason.NOT_FOUND:
                    raise
        raise FileRefused(RefusalReason.NOT_FOUND, f"file not found: {path}")
