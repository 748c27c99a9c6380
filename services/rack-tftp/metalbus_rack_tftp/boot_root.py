"""The static boot files: a ``FileSource`` over one directory that never serves anything outside it.

A requested path is first made relative to the boot root, the way tftpd-hpa with ``--secure`` reads it:
backslashes become slashes (pxelinux set up for Windows servers sends ``\\``; tftpd-hpa needs a map file for that,
we do it always) and one leading ``/`` is dropped (grub and some pxelinux configs send ``/grub/...``), so
``/etc/passwd`` means ``<root>/etc/passwd``. Then these are refused as ACCESS_VIOLATION: a NUL byte, a path longer
than ``MAX_PATH_BYTES`` or a component longer than ``MAX_NAME_BYTES``, any ``..`` component, a path that still
starts with ``/`` (``//etc``), a path whose resolution (symlinks followed) lands outside the root, and anything that
is not a regular file. A path that does not exist is NOT_FOUND.

Files are opened with ``os.open`` and read with ``os.pread``: nothing is loaded whole, and one open file serves
any number of random-access reads. Between resolving a path and opening it a symlink could be swapped; the final
component is opened with ``O_NOFOLLOW`` and the opened file is checked to be a regular file, and the boot root is
meant to be written only by the rack's own image import.
"""

import os
import stat
from pathlib import Path

from metalbus_rack_tftp.sources import FileRefused, OpenedFile, RefusalReason, Requester

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"


class DiskFile:
    """An open regular file, read by offset (``os.pread``); the descriptor is closed by ``close``."""

    def __init__(self, descriptor: int, size: int) -> None:
        self._descriptor = descriptor
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        return os.pread(self._descriptor, length, offset)

    def close(self) -> None:
        if self._descriptor >= 0:
            os.close(self._descriptor)
            self._descriptor = -1


def relative_boot_path(path: str) -> str:
    """``path`` as a path relative to the boot root, or ``FileRefused(ACCESS_VIOLATION)``."""
    if "\0" in path:
        raise _violation("a NUL byte in the path")
    encoded = path.encode(_ENCODING, _ERRORS)
    if len(encoded) > MAX_PATH_BYTES:
        raise _violation(f"path longer than {MAX_PATH_BYTES} bytes")
    relative = path.replace("\\", "/")
    relative = relative.removeprefix("/")
    if relative.startswith("/"):
        raise _violation("absolute path")
    components = relative.split("/")
    if ".." in components:
        raise _violation("'..' in the path")
    if any(len(component.encode(_ENCODING, _ERRORS)) > MAX_NAME_BYTES for component in components):
        raise _violation(f"a name longer than {MAX_NAME_BYTES} bytes")
    return relative


def _violation(why: str) -> FileRefused:
    return FileRefused(RefusalReason.ACCESS_VIOLATION, f"access violation: {why}")


def _not_found(path: str) -> FileRefused:
    return FileRefused(RefusalReason.NOT_FOUND, f"file not found: {path}")


class StaticBootRoot:
    """Regular files under ``root``, confined to it (see the module's docstring for what is refused)."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve(strict=True)

    @property
    def root(self) -> Path:
        return self._root

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        relative = relative_boot_path(path)
        try:
            resolved = (self._root / relative).resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise _not_found(path) from None
        except (OSError, RuntimeError) as error:  # a symlink loop, a permission denied on the way
            raise _violation(f"cannot resolve: {error.__class__.__name__}") from None
        if not resolved.is_relative_to(self._root):
            raise _violation("resolves outside the boot root")
        return self._open_regular_file(resolved, path)

    @staticmethod
    def _open_regular_file(resolved: Path, path: str) -> DiskFile:
        try:
            descriptor = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            raise _not_found(path) from None
        except OSError as error:  # permission denied, a symlink swapped in (ELOOP)
            raise _violation(f"cannot open: {error.__class__.__name__}") from None
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            os.close(descriptor)
            raise _violation("not a regular file")
        return DiskFile(descriptor, status.st_size)
