"""scripts/boot-files.sh fills a boot root with the Debian packages' own bootloader bytes, and reruns change nothing."""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
SCRIPT = REPOSITORY / "scripts" / "boot-files.sh"
SCRIPT_TIMEOUT_S = 120

# Written out here rather than read from the script, so that a change to the script's list has to be made twice.
FROM_PACKAGES = {
    "pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0",
    "lpxelinux.0": "/usr/lib/PXELINUX/lpxelinux.0",
    "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "libcom32.c32": "/usr/lib/syslinux/modules/bios/libcom32.c32",
    "libutil.c32": "/usr/lib/syslinux/modules/bios/libutil.c32",
    "menu.c32": "/usr/lib/syslinux/modules/bios/menu.c32",
    "chain.c32": "/usr/lib/syslinux/modules/bios/chain.c32",
    "bootx64.efi": "/usr/lib/shim/shimx64.efi.signed",
    "images/bootx64.efi": "/usr/lib/shim/shimx64.efi.signed",
    "undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",
    "ipxe.efi": "/usr/lib/ipxe/ipxe.efi",
    "snponly.efi": "/usr/lib/ipxe/snponly.efi",
    "grub/x86_64-efi/normal.mod": "/usr/lib/grub/x86_64-efi/normal.mod",
    "grub/x86_64-efi/linux.mod": "/usr/lib/grub/x86_64-efi/linux.mod",
    "grub/x86_64-efi/http.mod": "/usr/lib/grub/x86_64-efi/http.mod",
}

pytestmark = pytest.mark.skipif(
    shutil.which("grub-mknetdir") is None or not all(Path(source).exists() for source in FROM_PACKAGES.values()),
    reason="the boot packages are not installed (scripts/setup.sh installs them)",
)


def run_script(*arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    finished = subprocess.run(
        ["bash", str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    return finished.stdout


def tree_state(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under ``root``: its SHA-256, mtime (ns) and inode."""
    return {
        str(path.relative_to(root)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
            path.stat().st_ino,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def fresh_grub_network_image(tmp_path: Path) -> bytes:
    build = tmp_path / "grub-build"
    subprocess.run(
        ["grub-mknetdir", f"--net-directory={build}", "--subdir=grub", "--directory=/usr/lib/grub/x86_64-efi"],
        capture_output=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=True,
    )
    return (build / "grub" / "x86_64-efi" / "core.efi").read_bytes()


@pytest.fixture(scope="module")
def populated_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("populated") / "boot"
    run_script(str(root))
    return root


def test_every_bootloader_is_the_debian_packages_bytes(populated_root: Path) -> None:
    root = populated_root
    for name, source in FROM_PACKAGES.items():
        assert (root / name).read_bytes() == Path(source).read_bytes(), name
        assert not (root / name).is_symlink(), name


def test_shim_finds_grub_under_the_name_it_loads_next_to_itself(populated_root: Path, tmp_path: Path) -> None:
    root = populated_root
    shim = Path("/usr/lib/shim/shimx64.efi.signed").read_bytes()
    assert "\\grubx64.efi".encode("utf-16-le") in shim
    grub = fresh_grub_network_image(tmp_path)
    assert grub[:2] == b"MZ"
    assert (root / "grubx64.efi").read_bytes() == grub
    assert (root / "images" / "grubx64.efi").read_bytes() == grub
    assert (root / "grub" / "x86_64-efi" / "core.efi").read_bytes() == grub


def test_images_holds_only_the_uefi_http_boot_pair(populated_root: Path) -> None:
    root = populated_root
    assert sorted(path.name for path in (root / "images").iterdir()) == ["bootx64.efi", "grubx64.efi"]


def test_a_rerun_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "boot"
    run_script(str(root))
    before = tree_state(root)
    output = run_script(str(root))
    assert tree_state(root) == before
    assert "wrote" not in output


def test_a_rerun_repairs_a_damaged_file_and_only_that_one(tmp_path: Path) -> None:
    root = tmp_path / "boot"
    run_script(str(root))
    before = tree_state(root)
    (root / "lpxelinux.0").write_bytes(b"truncated")
    output = run_script(str(root))
    assert (root / "lpxelinux.0").read_bytes() == Path("/usr/lib/PXELINUX/lpxelinux.0").read_bytes()
    after = tree_state(root)
    assert {name for name in after if after[name] != before[name]} == {"lpxelinux.0"}
    assert output.count("wrote") == 1


def test_the_boot_root_comes_from_the_environment_or_a_relative_argument(tmp_path: Path) -> None:
    run_script(env={"METALBUS_BOOT_ROOT": str(tmp_path / "from-env")})
    run_script("relative/boot", cwd=tmp_path)
    assert (tmp_path / "from-env" / "lpxelinux.0").is_file()
    assert (tmp_path / "relative" / "boot" / "lpxelinux.0").is_file()
