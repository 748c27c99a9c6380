"""rack-tftp's per-machine boot configs against a real region, NATS and PostgreSQL.

The test plays the TFTP/HTTP servers: it opens config names through the file source the servers use
(``DynamicBootFiles`` → ``BootConfigCache`` → ``RegionBootConfigs`` on its own NATS connection), and checks what
a loader would read, what the region recorded, and that machine events replace cached answers.
"""

import asyncio
import gzip
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from metalbus.bus import Bus
from metalbus.contracts.boot import BootResource
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose, MachineAction, MachineCreate
from metalbus.subjects import MACHINE_CREATE
from metalbus_rack_tftp.boot_config_cache import BootConfigCache
from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.dynamic_files import DynamicBootFiles
from metalbus_rack_tftp.http_boot import serve_http_boot
from metalbus_rack_tftp.region_boot_client import RegionBootConfigs
from metalbus_rack_tftp.sources import FileRefused, FileSource, FirstThatServes, OpenedFile, RefusalReason, Requester
from tests.conftest import NatsServer
from tests.integration.test_boot import COMMISSIONING_IMAGE, ENLISTMENT_IMAGE, database, region, set_boot_images
from tests.integration.test_machines import act

MAC = "52:54:00:7a:00:01"
PXELINUX_NAME = "pxelinux.cfg/01-52-54-00-7a-00-01"
TFTP_CLIENT = Requester("10.20.0.50", 2070, "10.20.0.2", "tftp")
HTTP_CLIENT = Requester("10.20.0.50", 41000, "10.20.0.2", "http")
UEFI_ENLISTMENT = BootResource(
    architecture=Architecture.AMD64_UEFI,
    purpose=BootPurpose.ENLISTMENT,
    kernel="images/amd64-uefi/enlist/vmlinuz",
    initrd="images/amd64-uefi/enlist/initrd.img",
)
QEMU = shutil.which("qemu-system-x86_64")
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))
IPXE_ROM = Path("/usr/lib/ipxe/qemu/pxe-e1000.rom")
OVMF = Path("/usr/share/qemu/OVMF.fd")
GRUB_EFI_MODULES = Path("/usr/lib/grub/x86_64-efi")
IPXE_EFI = Path("/usr/lib/ipxe/ipxe.efi")
GRUB_MKNETDIR = shutil.which("grub-mknetdir")
QEMU_TIMEOUT_S = 120.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class RackTftp:
    files: DynamicBootFiles
    cache: BootConfigCache
    clock: ManualClock

    async def read(self, path: str, requester: Requester = TFTP_CLIENT) -> str:
        opened = await self.files.open(path, requester)
        try:
            return opened.read(0, opened.size).decode()
        finally:
            opened.close()


@asynccontextmanager
async def rack_tftp(nats: NatsServer, *, ttl_s: float = 60, stale_if_error_s: float = 0) -> AsyncIterator[RackTftp]:
    """The rack side as the service wires it, on its own connection; a long TTL unless told, so an answer that
    changes within the test can only have been replaced by a machine event."""
    bus = await Bus.connect(nats.options("rack-tftp:rack-1"))
    clock = ManualClock()
    region_client = RegionBootConfigs(bus, rack_id="rack-1", timeout_s=5)
    cache = BootConfigCache(region_client.boot_config, ttl_s=ttl_s, stale_if_error_s=stale_if_error_s, clock=clock)
    subscription = await region_client.follow_machine_events(cache.on_machine_event)
    try:
        yield RackTftp(DynamicBootFiles(cache, http_port=5248), cache, clock)
    finally:
        await subscription.unsubscribe()
        await cache.close()
        await bus.close()


async def machine_by_mac(dsn: str, mac: str) -> tuple[str, str, str]:
    async with database(dsn) as conn:
        row = await conn.fetchrow("SELECT system_id, status, boot_purpose FROM machines WHERE boot_mac = $1", mac)
    assert row is not None, f"no machine with boot MAC {mac}"
    return row["system_id"], row["status"], row["boot_purpose"]


async def test_an_unknown_mac_gets_the_enlistment_config_and_appears_new_in_the_region(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), rack_tftp(nats_server) as rack:
        await set_boot_images(bus)
        config = await rack.read(PXELINUX_NAME)
    system_id, status, purpose = await machine_by_mac(database_dsn, MAC)
    assert (status, purpose) == ("new", "enlistment")
    lines = config.splitlines()
    assert f"  KERNEL http://10.20.0.2:5248/{ENLISTMENT_IMAGE.kernel}" in lines
    assert f"  INITRD http://10.20.0.2:5248/{ENLISTMENT_IMAGE.initrd}" in lines
    [append] = [line for line in lines if line.startswith("  APPEND ")]
    assert append.split()[1:] == [
        "console=tty0",
        "metalbus.purpose=enlistment",
        f"metalbus.system_id={system_id}",
        "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/enlist/",
        "metalbus.syslog=10.20.0.2:5247",
        "BOOTIF=01-52-54-00-7a-00-01",
    ]


async def test_commissioning_replaces_the_cached_config_within_a_second_with_the_machines_credentials(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), rack_tftp(nats_server) as rack:
        await set_boot_images(bus)
        enlistment = await rack.read(PXELINUX_NAME)
        assert await rack.read(PXELINUX_NAME) == enlistment  # the second read came from the cache
        system_id, _, _ = await machine_by_mac(database_dsn, MAC)
        asked_before = rack.cache.region_requests
        await act(bus, system_id, MachineAction.COMMISSION)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        commissioning = enlistment
        while commissioning == enlistment and loop.time() < deadline:
            await asyncio.sleep(0.02)
            commissioning = await rack.read(PXELINUX_NAME)
        assert rack.clock.now == 0  # no time passed for the cache: only the machine event can have dropped it
        assert rack.cache.region_requests == asked_before + 1
    async with database(database_dsn) as conn:
        token = await conn.fetchrow(
            "SELECT consumer_key, token_key, token_secret FROM metadata_tokens WHERE system_id = $1 "
            "AND revoked_at IS NULL",
            system_id,
        )
    assert token is not None
    lines = commissioning.splitlines()
    assert f"  KERNEL http://10.20.0.2:5248/{COMMISSIONING_IMAGE.kernel}" in lines
    [append] = [line for line in lines if line.startswith("  APPEND ")]
    assert append.split()[1:] == [
        "console=ttyS0,115200",
        "metalbus.purpose=commissioning",
        f"metalbus.system_id={system_id}",
        "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/",
        f"metalbus.consumer_key={token['consumer_key']}",
        f"metalbus.token_key={token['token_key']}",
        f"metalbus.token_secret={token['token_secret']}",
        "metalbus.syslog=10.20.0.2:5247",
        "BOOTIF=01-52-54-00-7a-00-01",
    ]


async def test_grub_and_ipxe_files_for_one_mac_name_the_same_machine_and_its_uefi_images(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with region(nats_server, database_dsn, bus), rack_tftp(nats_server) as rack:
        await set_boot_images(bus, UEFI_ENLISTMENT)
        grub_bootstrap = await rack.read("grub/grub.cfg")
        grub = await rack.read(f"grub/grub.cfg-{MAC}-x86_64")
        ipxe_bootstrap = await rack.read(f"ipxe.cfg-{MAC}", HTTP_CLIENT)
        ipxe = await rack.read(f"ipxe.cfg-{MAC}-x86_64-efi", HTTP_CLIENT)
        with pytest.raises(FileRefused) as no_bios_image:
            await rack.read(PXELINUX_NAME)
    system_id, status, _ = await machine_by_mac(database_dsn, MAC)
    assert status == "new"
    assert "configfile ${prefix}/grub.cfg-${net_default_mac}-${grub_cpu}" in grub_bootstrap
    assert f"    linux (http,10.20.0.2:5248)/{UEFI_ENLISTMENT.kernel} " in grub
    assert f"    initrd (http,10.20.0.2:5248)/{UEFI_ENLISTMENT.initrd}" in grub.splitlines()
    assert f"chain http://10.20.0.2:5248/ipxe.cfg-{MAC}-${{buildarch}}-${{platform}} ||" in ipxe_bootstrap
    assert f"initrd --name initrd.img http://10.20.0.2:5248/{UEFI_ENLISTMENT.initrd}" in ipxe.splitlines()
    for text in (grub, ipxe):
        assert f"metalbus.system_id={system_id}" in text
        assert "metalbus.purpose=enlistment" in text
    # No amd64/bios enlistment image was set: the region says so, and the loader is told "unavailable".
    assert no_bios_image.value.reason is RefusalReason.UNAVAILABLE
    assert "amd64/bios" in no_bios_image.value.message


async def test_with_the_region_stopped_cached_answers_are_served_and_others_get_no_answer_to_ask_again(
    nats_server: NatsServer, database_dsn: str, bus: Bus
) -> None:
    async with rack_tftp(nats_server, ttl_s=10, stale_if_error_s=60) as rack:
        async with region(nats_server, database_dsn, bus):
            await set_boot_images(bus)
            before = await rack.read(PXELINUX_NAME)
        rack.clock.now = 9.9
        assert await rack.read(PXELINUX_NAME) == before  # within the TTL: the region is not even asked
        asked = rack.cache.region_requests
        rack.clock.now = 59.9
        assert await rack.read(PXELINUX_NAME) == before  # expired: asked, no answer, the stale copy served
        assert (rack.cache.region_requests, rack.cache.served_stale) == (asked + 1, 1)
        rack.clock.now = 60.0
        with pytest.raises(FileRefused) as too_old:
            await rack.read(PXELINUX_NAME)
        with pytest.raises(FileRefused) as unknown:
            await rack.read("pxelinux.cfg/01-52-54-00-7a-00-02")
    assert too_old.value.reason is unknown.value.reason is RefusalReason.REGION_SILENT
    assert "region.boot.config" in unknown.value.message


class SeenThroughQemuNat:
    """qemu's user network shows the host to the guest as 10.0.2.2: that is the rack address the guest reached,
    which the server's socket (127.0.0.1 behind the NAT) cannot tell."""

    def __init__(self, source: FileSource) -> None:
        self.source = source

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        return await self.source.open(path, replace(requester, local_address="10.0.2.2"))


async def console_until(stream: asyncio.StreamReader, marker: bytes, *, line_end: bool = False) -> bytes:
    """The console output up to ``marker`` (and the end of its line with ``line_end``), read in chunks, not lines:
    firmware often prints without a newline."""

    def done(seen: bytes) -> bool:
        return marker in seen and (not line_end or b"\n" in seen[seen.index(marker) :])

    seen = b""
    while not done(seen):
        chunk = await stream.read(4096)
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or not IPXE_ROM.exists() or not KERNELS, reason="needs qemu-system-x86, ipxe-qemu and a kernel"
)
async def test_ipxe_in_qemu_chains_to_its_architecture_script_and_boots_the_kernel_the_region_chose(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    mac = "52:54:00:7a:00:09"
    images = tmp_path / "boot" / "images" / "qemu"
    images.mkdir(parents=True)
    shutil.copyfile(KERNELS[-1], images / "vmlinuz")
    (images / "initrd.img").write_bytes(gzip.compress(b""))
    image = BootResource(
        architecture=Architecture.AMD64_BIOS,
        purpose=BootPurpose.ENLISTMENT,
        kernel="images/qemu/vmlinuz",
        initrd="images/qemu/initrd.img",
        kernel_params="console=ttyS0 panic=-1",
    )
    async with region(nats_server, database_dsn, bus), rack_tftp(nats_server) as rack:
        await set_boot_images(bus, image)
        chain = FirstThatServes([rack.files, StaticBootRoot(tmp_path / "boot")])
        server = await serve_http_boot("127.0.0.1", 0, SeenThroughQemuNat(chain))
        rack.files.http_port = server.port
        assert QEMU is not None
        qemu = await asyncio.create_subprocess_exec(
            *(QEMU, "-nographic", "-m", "256", "-no-reboot", "-boot", "n"),
            *("-netdev", f"user,id=net0,bootfile=http://10.0.2.2:{server.port}/ipxe.cfg-${{mac}}"),
            *("-device", f"e1000,netdev=net0,mac={mac},romfile={IPXE_ROM}"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        assert qemu.stdout is not None
        try:
            console = await asyncio.wait_for(
                console_until(qemu.stdout, b"Kernel command line:", line_end=True), QEMU_TIMEOUT_S
            )
        finally:
            if qemu.returncode is None:
                qemu.kill()
            await qemu.wait()
            await server.close()
    system_id, status, _ = await machine_by_mac(database_dsn, mac)
    text = console.decode(errors="replace")
    assert status == "new"
    assert "-i386-pcbios... ok" in text, text[-3000:]  # iPXE's BIOS build calls itself i386, on any CPU
    [command_line] = [line for line in text.splitlines() if "Kernel command line:" in line]
    assert command_line.split("Kernel command line: ")[1].split() == [
        "initrd=initrd.img",
        "console=ttyS0",
        "panic=-1",
        "metalbus.purpose=enlistment",
        f"metalbus.system_id={system_id}",
        "metalbus.metadata_url=http://10.0.2.2:5248/MAAS/metadata/enlist/",
        "metalbus.syslog=10.0.2.2:5247",
        "BOOTIF=01-52-54-00-7a-00-09",
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    QEMU is None or GRUB_MKNETDIR is None or not (OVMF.exists() and GRUB_EFI_MODULES.exists() and IPXE_EFI.exists()),
    reason="needs qemu-system-x86, ovmf, grub-efi-amd64-bin and ipxe",
)
async def test_grub_in_qemu_boots_a_local_machine_from_the_efi_loader_on_its_disk(
    nats_server: NatsServer, database_dsn: str, bus: Bus, tmp_path: Path
) -> None:
    """A machine that should boot local: GRUB (as grub-mknetdir builds it, over qemu's TFTP) reads the bootstrap
    and the machine's config we render, finds ``/EFI/BOOT/BOOTX64.EFI`` on the disk and chainloads it."""
    mac = "52:54:00:7a:00:0a"
    tftp_root, esp = tmp_path / "tftp", tmp_path / "esp" / "EFI" / "BOOT"
    esp.mkdir(parents=True)
    shutil.copyfile(IPXE_EFI, esp / "BOOTX64.EFI")  # any EFI program that says who it is will do
    assert QEMU is not None and GRUB_MKNETDIR is not None
    mknetdir = await asyncio.create_subprocess_exec(
        *(GRUB_MKNETDIR, f"--net-directory={tftp_root}", "--subdir=grub", f"--directory={GRUB_EFI_MODULES}"),
        *("--locales=", "--fonts=", "--themes="),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(mknetdir.wait(), 60) == 0
    async with region(nats_server, database_dsn, bus), rack_tftp(nats_server) as rack:
        await bus.request(MACHINE_CREATE, MachineCreate(boot_mac=mac, architecture=Architecture.AMD64_UEFI), timeout=5)
        (tftp_root / "grub" / "grub.cfg").write_text(await rack.read("grub/grub.cfg"))
        machine_config = await rack.read(f"grub/grub.cfg-{mac}-x86_64")
    (tftp_root / "grub" / f"grub.cfg-{mac}-x86_64").write_text(machine_config)
    qemu = await asyncio.create_subprocess_exec(
        *(QEMU, "-nographic", "-m", "256", "-no-reboot", "-bios", str(OVMF)),
        *("-netdev", f"user,id=net0,tftp={tftp_root},bootfile=grub/x86_64-efi/core.efi"),
        *("-device", f"virtio-net-pci,netdev=net0,mac={mac},romfile=,bootindex=1"),
        *("-drive", f"if=none,id=esp,format=raw,readonly=on,file=fat:{tmp_path / 'esp'}"),
        *("-device", "virtio-blk-pci,drive=esp,bootindex=2"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert qemu.stdout is not None
    try:
        console = await asyncio.wait_for(console_until(qemu.stdout, b"iPXE initialising devices"), QEMU_TIMEOUT_S)
    finally:
        if qemu.returncode is None:
            qemu.kill()
        await qemu.wait()
    text = console.decode(errors="replace")
    assert "Booting the local disk under metalbus direction" in text, text[-3000:]
    assert text.index("iPXE initialising devices") > text.index("Booting the local disk under metalbus direction")
    assert "No EFI loader on the local disks" not in text
