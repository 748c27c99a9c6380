"""The boot-config file source: names → the region's decision → the loader's text; other names to the next source."""

from ipaddress import IPv4Address

import pytest

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose
from metalbus_rack_tftp.dynamic_files import DynamicBootFiles
from metalbus_rack_tftp.sources import FileRefused, FirstThatServes, MemoryFile, OpenedFile, RefusalReason, Requester

MAC = "52:54:00:ab:cd:ef"
TFTP_CLIENT = Requester("10.20.0.50", 2070, "10.20.0.2", "tftp")
HTTP_CLIENT = Requester("10.20.0.50", 40000, "10.20.0.2", "http")
COMMISSIONING = BootConfig(
    system_id="x7kq2m",
    purpose=BootPurpose.COMMISSIONING,
    kernel="images/amd64/ephemeral/vmlinuz",
    initrd="images/amd64/ephemeral/initrd.img",
    squashfs="images/amd64/ephemeral/squashfs",
    kernel_command_line="console=ttyS0 metalbus.purpose=commissioning metalbus.token_secret=s3cr3t",
)


class FakeDecisions:
    def __init__(self, answer: BootConfig | FileRefused = COMMISSIONING) -> None:
        self.answer = answer
        self.asked: list[tuple[str, Architecture, IPv4Address]] = []

    async def boot_config(self, mac: str, architecture: Architecture, rack_address: IPv4Address) -> BootConfig:
        self.asked.append((mac, architecture, rack_address))
        if isinstance(self.answer, FileRefused):
            raise self.answer
        return self.answer


class StaticRoot:
    """Stands in for the boot root: serves one file, NOT_FOUND for the rest."""

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        if path == "lpxelinux.0":
            return MemoryFile(b"\x00pxelinux")
        raise FileRefused(RefusalReason.NOT_FOUND, path)


async def read(source: DynamicBootFiles | FirstThatServes, path: str, requester: Requester = TFTP_CLIENT) -> str:
    opened = await source.open(path, requester)
    try:
        return opened.read(0, opened.size).decode()
    finally:
        opened.close()


@pytest.mark.parametrize(
    ("path", "architecture", "first_line"),
    [
        ("pxelinux.cfg/01-52-54-00-ab-cd-ef", Architecture.AMD64_BIOS, "DEFAULT metalbus"),
        ("grub/grub.cfg-52:54:00:ab:cd:ef-x86_64", Architecture.AMD64_UEFI, 'set default="0"'),
        ("grub/grub.cfg-52:54:00:ab:cd:ef-arm64", Architecture.ARM64_UEFI, 'set default="0"'),
        ("ipxe.cfg-52:54:00:ab:cd:ef-x86_64-efi", Architecture.AMD64_UEFI, "#!ipxe"),
    ],
)
async def test_a_machine_config_is_the_regions_decision_for_that_mac_and_architecture_on_the_reached_rack(
    path: str, architecture: Architecture, first_line: str
) -> None:
    decisions = FakeDecisions()
    text = await read(DynamicBootFiles(decisions, http_port=5248), path)
    assert decisions.asked == [(MAC, architecture, IPv4Address("10.20.0.2"))]
    assert text.splitlines()[0] == first_line
    assert "http://10.20.0.2:5248/images/amd64/ephemeral/vmlinuz" in text or "(http,10.20.0.2:5248)" in text
    assert "metalbus.token_secret=s3cr3t" in text


async def test_bootstraps_and_pxelinux_default_are_answered_without_asking_the_region() -> None:
    decisions = FakeDecisions()
    source = DynamicBootFiles(decisions, http_port=8248)
    ipxe = await read(source, "ipxe.cfg-52:54:00:ab:cd:ef", HTTP_CLIENT)
    grub = await read(source, "grub/grub.cfg")
    default = await read(source, "pxelinux.cfg/default")
    assert "chain http://10.20.0.2:8248/ipxe.cfg-52:54:00:ab:cd:ef-${buildarch}-${platform} ||" in ipxe
    assert "configfile ${prefix}/grub.cfg-${net_default_mac}-${grub_cpu}" in grub
    assert "LOCALBOOT 0" in default
    assert decisions.asked == []


async def test_kernels_come_over_tftp_when_http_is_switched_off() -> None:
    source = DynamicBootFiles(FakeDecisions(), kernels_over_http=False)
    text = await read(source, "pxelinux.cfg/01-52-54-00-ab-cd-ef")
    assert "  KERNEL images/amd64/ephemeral/vmlinuz" in text.splitlines()


@pytest.mark.parametrize(
    "path", ["lpxelinux.0", "pxelinux.cfg/C0A8025B", "pxelinux.cfg/b8945908-d6a6-41a9-611d-74a6ab80b83d"]
)
async def test_other_names_are_not_found_here_and_the_static_root_gets_them(path: str) -> None:
    decisions = FakeDecisions()
    with pytest.raises(FileRefused) as refused:
        await DynamicBootFiles(decisions).open(path, TFTP_CLIENT)
    assert refused.value.reason is RefusalReason.NOT_FOUND
    chain = FirstThatServes([DynamicBootFiles(decisions), StaticRoot()])
    if path == "lpxelinux.0":
        assert await read(chain, path) == "\x00pxelinux"
    else:
        with pytest.raises(FileRefused) as refused:
            await chain.open(path, TFTP_CLIENT)
        assert refused.value.reason is RefusalReason.NOT_FOUND
    assert decisions.asked == []


async def test_a_region_that_does_not_answer_is_unavailable_and_ends_the_chain() -> None:
    down = FakeDecisions(FileRefused(RefusalReason.UNAVAILABLE, "no service is answering on region.boot.config"))
    chain = FirstThatServes([DynamicBootFiles(down), StaticRoot()])
    with pytest.raises(FileRefused) as refused:
        await chain.open("pxelinux.cfg/01-52-54-00-ab-cd-ef", TFTP_CLIENT)
    assert refused.value.reason is RefusalReason.UNAVAILABLE


@pytest.mark.parametrize(
    "unsafe",
    [
        COMMISSIONING.model_copy(update={"kernel": "images/a b/vmlinuz"}),
        COMMISSIONING.model_copy(update={"initrd": "../etc/shadow"}),
        COMMISSIONING.model_copy(update={"kernel_command_line": "console=ttyS0\n  KERNEL http://evil/"}),
    ],
    ids=["space-in-path", "path-out-of-root", "newline-on-command-line"],
)
async def test_an_answer_that_cannot_be_written_safely_into_a_config_is_refused(unsafe: BootConfig) -> None:
    with pytest.raises(FileRefused) as refused:
        await DynamicBootFiles(FakeDecisions(unsafe)).open("pxelinux.cfg/01-52-54-00-ab-cd-ef", TFTP_CLIENT)
    assert refused.value.reason is RefusalReason.UNAVAILABLE


async def test_a_wildcard_bound_server_falls_back_to_the_configured_rack_address() -> None:
    wildcard_client = Requester("10.20.0.50", 2070, "0.0.0.0", "tftp")
    decisions = FakeDecisions()
    with pytest.raises(FileRefused) as refused:
        await DynamicBootFiles(decisions).open("pxelinux.cfg/01-52-54-00-ab-cd-ef", wildcard_client)
    assert refused.value.reason is RefusalReason.UNAVAILABLE
    source = DynamicBootFiles(decisions, rack_address=IPv4Address("10.20.0.3"))
    text = await read(source, "pxelinux.cfg/01-52-54-00-ab-cd-ef", wildcard_client)
    assert "KERNEL http://10.20.0.3:5248/" in text
    assert decisions.asked == [(MAC, Architecture.AMD64_BIOS, IPv4Address("10.20.0.3"))]
