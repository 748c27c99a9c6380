"""The static boot root serves regular files under its directory, read by offset, and refuses everything that
would leave it: ``..``, absolute paths, symlinks out, NUL bytes, over-long names, non-regular files."""

import os
from pathlib import Path

import pytest

from metalbus_rack_tftp.boot_root import MAX_NAME_BYTES, MAX_PATH_BYTES, StaticBootRoot
from metalbus_rack_tftp.sources import FileRefused, RefusalReason, Requester

ASKER = Requester("10.0.0.9", 2000, "10.0.0.1", "tftp")


@pytest.fixture
def boot_root(tmp_path: Path) -> StaticBootRoot:
    root = tmp_path / "boot"
    (root / "grub").mkdir(parents=True)
    (root / "pxelinux.0").write_bytes(bytes(range(256)) * 10)
    (root / "grub" / "grub.cfg").write_bytes(b"set default=0\n")
    (tmp_path / "secret").write_bytes(b"outside")
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "inside-link").symlink_to(root / "grub" / "grub.cfg")
    os.mkfifo(root / "fifo")
    return StaticBootRoot(root)


async def refusal(root: StaticBootRoot, path: str) -> RefusalReason:
    with pytest.raises(FileRefused) as refused:
        await root.open(path, ASKER)
    return refused.value.reason


async def content(root: StaticBootRoot, path: str) -> bytes:
    opened = await root.open(path, ASKER)
    try:
        return opened.read(0, opened.size)
    finally:
        opened.close()


async def test_a_file_is_served_with_its_size_and_read_by_offset(boot_root: StaticBootRoot) -> None:
    opened = await boot_root.open("pxelinux.0", ASKER)
    try:
        assert opened.size == 2560
        assert opened.read(255, 3) == b"\xff\x00\x01"
        assert opened.read(2558, 100) == b"\xfe\xff"
        assert opened.read(2560, 10) == b""
    finally:
        opened.close()


@pytest.mark.parametrize("path", ["grub/grub.cfg", "/grub/grub.cfg", "grub\\grub.cfg", "./grub/./grub.cfg"])
async def test_one_leading_slash_backslashes_and_dot_components_name_the_same_file(
    boot_root: StaticBootRoot, path: str
) -> None:
    assert await content(boot_root, path) == b"set default=0\n"


async def test_a_symlink_that_stays_inside_the_root_is_followed(boot_root: StaticBootRoot) -> None:
    assert await content(boot_root, "inside-link") == b"set default=0\n"


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "grub/../../secret",
        "..\\secret",
        "//etc/passwd",
        "escape",
        "with\0nul",
        "a" * (MAX_NAME_BYTES + 1),
        "a/" * (MAX_PATH_BYTES // 2 + 1),
        "fifo",
        "grub",
        "",
    ],
)
async def test_paths_leaving_the_root_or_naming_no_regular_file_are_access_violations(
    boot_root: StaticBootRoot, path: str
) -> None:
    assert await refusal(boot_root, path) is RefusalReason.ACCESS_VIOLATION


@pytest.mark.parametrize("path", ["missing", "/etc/passwd", "grub/missing.cfg", "pxelinux.0/below-a-file"])
async def test_paths_inside_the_root_that_do_not_exist_are_not_found(boot_root: StaticBootRoot, path: str) -> None:
    assert await refusal(boot_root, path) is RefusalReason.NOT_FOUND


async def test_a_closed_file_gives_back_its_descriptor(boot_root: StaticBootRoot) -> None:
    before = len(os.listdir("/proc/self/fd"))
    opened = [await boot_root.open("pxelinux.0", ASKER) for _ in range(20)]
    assert len(os.listdir("/proc/self/fd")) == before + 20
    for file in opened:
        file.close()
    assert len(os.listdir("/proc/self/fd")) == before
