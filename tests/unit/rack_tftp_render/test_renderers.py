"""pxelinux, GRUB and iPXE configs rendered from boot decisions: exact text for one case each, then properties
over every purpose, architecture and transport: the loader loads exactly the kernel and initrd the region gave,
passes its command line on, and "boot local" really falls to the disk (and never exits 0 on EFI)."""

import re
import shlex
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose
from metalbus_rack_tftp.boot_paths import BootServer
from metalbus_rack_tftp.render_grub import grub_word, render_grub_bootstrap, render_grub_config
from metalbus_rack_tftp.render_ipxe import render_ipxe_bootstrap, render_ipxe_config
from metalbus_rack_tftp.render_pxelinux import render_pxelinux_config, render_pxelinux_local_boot

MAC = "52:54:00:ab:cd:ef"
RACK = IPv4Address("10.20.0.2")
OVER_HTTP = BootServer(RACK, 5248, kernels_over_http=True)
OVER_TFTP = BootServer(RACK, 5248, kernels_over_http=False)
COMMAND_LINE = (
    "console=ttyS0,115200 metalbus.purpose=commissioning metalbus.system_id=x7kq2m "
    "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/ metalbus.consumer_key=cKey "
    "metalbus.token_key=tKey metalbus.token_secret=s3cr3t"
)
COMMISSIONING = BootConfig(
    system_id="x7kq2m",
    purpose=BootPurpose.COMMISSIONING,
    kernel="images/amd64/ephemeral/vmlinuz",
    initrd="images/amd64/ephemeral/initrd.img",
    squashfs="images/amd64/ephemeral/squashfs",
    kernel_command_line=COMMAND_LINE,
)
ENLISTMENT = BootConfig(
    system_id="x7kq2m",
    purpose=BootPurpose.ENLISTMENT,
    kernel="images/amd64/enlist/vmlinuz",
    initrd="images/amd64/enlist/initrd.img",
    squashfs=None,
    kernel_command_line="console=tty0 metalbus.purpose=enlistment metalbus.system_id=x7kq2m "
    "metalbus.metadata_url=http://10.20.0.2:5248/MAAS/metadata/enlist/",
)
LOCAL = BootConfig(
    system_id="x7kq2m", purpose=BootPurpose.LOCAL, kernel=None, initrd=None, squashfs=None, kernel_command_line=""
)
NETWORK_BOOTS = [COMMISSIONING, ENLISTMENT]
UEFI = [Architecture.AMD64_UEFI, Architecture.ARM64_UEFI]


def test_pxelinux_commissioning_config_exact_text() -> None:
    assert render_pxelinux_config(COMMISSIONING, mac=MAC, server=OVER_HTTP) == (
        "DEFAULT metalbus\n"
        "PROMPT 0\n"
        "\n"
        "LABEL metalbus\n"
        "  SAY Booting under metalbus direction: commissioning...\n"
        "  KERNEL http://10.20.0.2:5248/images/amd64/ephemeral/vmlinuz\n"
        "  INITRD http://10.20.0.2:5248/images/amd64/ephemeral/initrd.img\n"
        f"  APPEND {COMMAND_LINE} BOOTIF=01-52-54-00-ab-cd-ef\n"
    )


def test_grub_commissioning_config_exact_text() -> None:
    rendered = render_grub_config(COMMISSIONING, mac=MAC, architecture=Architecture.AMD64_UEFI, server=OVER_HTTP)
    assert rendered == (
        'set default="0"\n'
        "set timeout=0\n"
        'set fallback="1"\n'
        "\n"
        "menuentry 'metalbus commissioning' {\n"
        "    echo 'Booting under metalbus direction: commissioning...'\n"
        f"    linux (http,10.20.0.2:5248)/images/amd64/ephemeral/vmlinuz {COMMAND_LINE} BOOTIF=01-52-54-00-ab-cd-ef\n"
        "    initrd (http,10.20.0.2:5248)/images/amd64/ephemeral/initrd.img\n"
        "}\n"
        "\n"
        "menuentry 'Next boot option of the firmware' {\n"
        "    exit 1\n"
        "}\n"
    )


def test_ipxe_commissioning_config_exact_text() -> None:
    rendered = render_ipxe_config(COMMISSIONING, mac=MAC, architecture=Architecture.AMD64_UEFI, server=OVER_HTTP)
    assert rendered == (
        "#!ipxe\n"
        "echo Booting under metalbus direction: commissioning...\n"
        "kernel http://10.20.0.2:5248/images/amd64/ephemeral/vmlinuz initrd=initrd.img "
        f"{COMMAND_LINE} BOOTIF=01-52-54-00-ab-cd-ef\n"
        "initrd --name initrd.img http://10.20.0.2:5248/images/amd64/ephemeral/initrd.img\n"
        "boot ||\n"
        "echo metalbus: the boot failed: on to the next boot option of the firmware\n"
        "exit 1\n"
    )


def test_pxelinux_local_boot_exact_text() -> None:
    expected = (
        "DEFAULT local\n"
        "PROMPT 0\n"
        "\n"
        "LABEL local\n"
        "  SAY Booting the local disk under metalbus direction...\n"
        "  LOCALBOOT 0\n"
    )
    assert render_pxelinux_config(LOCAL, mac=MAC, server=OVER_HTTP) == expected
    assert render_pxelinux_local_boot() == expected


def test_ipxe_bootstrap_chains_to_the_name_with_the_architecture_and_falls_to_the_disk() -> None:
    assert render_ipxe_bootstrap(mac=MAC, server=OVER_HTTP) == (
        "#!ipxe\n"
        "chain http://10.20.0.2:5248/ipxe.cfg-52:54:00:ab:cd:ef-${buildarch}-${platform} ||\n"
        "echo metalbus: no boot config for ${mac}: booting the local disk\n"
        "iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\n"
        "exit 1\n"
    )
    assert "ipxe.cfg-${mac}-${buildarch}-${platform}" in render_ipxe_bootstrap(mac=None, server=OVER_HTTP)


def test_grub_bootstrap_reads_the_per_cpu_config_over_the_same_protocol_then_exits_1() -> None:
    bootstrap = render_grub_bootstrap().splitlines()
    assert "configfile ${prefix}/grub.cfg-${net_default_mac}-${grub_cpu}" in bootstrap
    assert bootstrap[-1] == "exit 1"
    assert "(http" not in render_grub_bootstrap() and "(tftp" not in render_grub_bootstrap()


# -- what each loader loads --------------------------------------------------------------------------------


def loaded_files(text: str) -> tuple[str, str, list[str]]:
    """(kernel location, initrd location, command line words) as the loader reads them from its config."""
    if text.startswith("#!ipxe"):
        [kernel_line] = [line for line in text.splitlines() if line.startswith("kernel ")]
        [initrd_line] = [line for line in text.splitlines() if line.startswith("initrd ")]
        _, kernel, *words = kernel_line.split()
        return kernel, initrd_line.split()[-1], [w for w in words if w != "initrd=initrd.img"]
    if "menuentry" in text:
        [kernel_line] = [line.strip() for line in text.splitlines() if line.strip().startswith("linux ")]
        [initrd_line] = [line.strip() for line in text.splitlines() if line.strip().startswith("initrd ")]
        _, kernel, *words = shlex.split(kernel_line)  # GRUB's quoting is the shell's for single quotes
        return kernel, initrd_line.split()[1], words
    fields = dict(line.strip().split(" ", 1) for line in text.splitlines() if line.startswith("  "))
    return fields["KERNEL"], fields["INITRD"], fields["APPEND"].split()


def render(loader: str, config: BootConfig, architecture: Architecture, server: BootServer) -> str:
    if loader == "pxelinux":
        return render_pxelinux_config(config, mac=MAC, server=server)
    if loader == "grub":
        return render_grub_config(config, mac=MAC, architecture=architecture, server=server)
    return render_ipxe_config(config, mac=MAC, architecture=architecture, server=server)


CASES = [
    ("pxelinux", Architecture.AMD64_BIOS, OVER_HTTP, "http://10.20.0.2:5248/"),
    ("pxelinux", Architecture.AMD64_BIOS, OVER_TFTP, ""),
    ("grub", Architecture.AMD64_UEFI, OVER_HTTP, "(http,10.20.0.2:5248)/"),
    ("grub", Architecture.ARM64_UEFI, OVER_TFTP, "(tftp,10.20.0.2)/"),
    ("ipxe", Architecture.AMD64_BIOS, OVER_HTTP, "http://10.20.0.2:5248/"),
    ("ipxe", Architecture.AMD64_UEFI, OVER_TFTP, "tftp://10.20.0.2/"),
]


@pytest.mark.parametrize("config", NETWORK_BOOTS, ids=lambda c: c.purpose.value)
@pytest.mark.parametrize(("loader", "architecture", "server", "prefix"), CASES)
def test_loader_loads_exactly_the_regions_kernel_and_initrd_and_passes_its_command_line(
    loader: str, architecture: Architecture, server: BootServer, prefix: str, config: BootConfig
) -> None:
    kernel, initrd, words = loaded_files(render(loader, config, architecture, server))
    assert (kernel, initrd) == (f"{prefix}{config.kernel}", f"{prefix}{config.initrd}")
    assert words == [*config.kernel_command_line.split(), "BOOTIF=01-52-54-00-ab-cd-ef"]


@pytest.mark.parametrize("config", NETWORK_BOOTS, ids=lambda c: c.purpose.value)
@pytest.mark.parametrize(("loader", "architecture", "server", "prefix"), CASES)
def test_every_boot_file_named_in_a_config_is_one_the_region_gave(
    loader: str, architecture: Architecture, server: BootServer, prefix: str, config: BootConfig
) -> None:
    text = render(loader, config, architecture, server)
    named = set(re.findall(r"images/[^\s']+", text))
    assert named == {config.kernel, config.initrd}  # the squashfs is the initramfs's business, not the loader's


# -- boot local --------------------------------------------------------------------------------------------


def test_pxelinux_local_boot_returns_to_the_bios_disk() -> None:
    text = render_pxelinux_config(LOCAL, mac=MAC, server=OVER_HTTP)
    assert "  LOCALBOOT 0" in text.splitlines()
    assert "KERNEL" not in text and "images/" not in text


@pytest.mark.parametrize(
    ("architecture", "removable_path"),
    [(Architecture.AMD64_UEFI, "/efi/boot/bootx64.efi"), (Architecture.ARM64_UEFI, "/efi/boot/bootaa64.efi")],
)
def test_grub_local_boot_chainloads_the_disks_efi_loader_then_exits_1(
    architecture: Architecture, removable_path: str
) -> None:
    text = render_grub_config(LOCAL, mac=MAC, architecture=architecture, server=OVER_HTTP)
    loaders = re.search(r"for loader in (.*?); do", text, re.DOTALL)
    assert loaders is not None
    assert removable_path in loaders.group(1).split()
    assert "search --no-floppy --set=root --file $loader" in text
    assert "chainloader $loader" in text
    lines = [line.strip() for line in text.splitlines()]
    search = lines.index("search --no-floppy --set=root --file $loader")
    # a modular GRUB does not autoload these, and search then finds no disk at all (seen in qemu/OVMF)
    assert all(lines.index(f"insmod {module}") < search for module in ("part_gpt", "part_msdos", "fat"))
    assert lines.index("exit 1") > lines.index("done")  # only once no loader was found
    assert "linux " not in text and "images/" not in text


def test_ipxe_local_boot_sanboots_the_first_disk_on_bios() -> None:
    text = render_ipxe_config(LOCAL, mac=MAC, architecture=Architecture.AMD64_BIOS, server=OVER_HTTP)
    assert text.splitlines()[-2:] == ["sanboot --no-describe --drive 0x80 ||", "exit 1"]


@pytest.mark.parametrize("architecture", UEFI)
def test_ipxe_local_boot_on_efi_exits_1_so_the_firmware_tries_its_next_option(architecture: Architecture) -> None:
    text = render_ipxe_config(LOCAL, mac=MAC, architecture=architecture, server=OVER_HTTP)
    assert text.splitlines()[-1] == "exit 1"
    assert "sanboot" not in text


@pytest.mark.parametrize("config", [*NETWORK_BOOTS, LOCAL], ids=lambda c: c.purpose.value)
@pytest.mark.parametrize("architecture", [Architecture.AMD64_BIOS, *UEFI])
def test_no_ipxe_or_grub_text_ever_exits_with_status_0(config: BootConfig, architecture: Architecture) -> None:
    texts = [
        render_ipxe_config(config, mac=MAC, architecture=architecture, server=OVER_HTTP),
        render_ipxe_bootstrap(mac=MAC, server=OVER_HTTP),
        render_grub_bootstrap(),
    ]
    if architecture is not Architecture.AMD64_BIOS:
        texts.append(render_grub_config(config, mac=MAC, architecture=architecture, server=OVER_HTTP))
    for text in texts:
        exits = [line.strip() for line in text.splitlines() if line.strip().startswith("exit")]
        assert exits and all(line == "exit 1" for line in exits), text


# -- GRUB quoting ------------------------------------------------------------------------------------------

WORD = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"'), min_size=1, max_size=30
)


@given(st.lists(WORD, min_size=1, max_size=8))
def test_grub_words_reach_the_kernel_as_written(words: list[str]) -> None:
    config = COMMISSIONING.model_copy(update={"kernel_command_line": " ".join(words)})
    text = render_grub_config(config, mac=MAC, architecture=Architecture.AMD64_UEFI, server=OVER_HTTP)
    _, _, rendered_words = loaded_files(text)
    assert rendered_words == [*words, "BOOTIF=01-52-54-00-ab-cd-ef"]


def test_grub_quotes_what_it_would_expand() -> None:
    assert grub_word("metalbus.token_key=abc") == "metalbus.token_key=abc"
    assert grub_word("x=${y}") == "'x=${y}'"
    assert grub_word("it's") == "'it'\\''s'"
