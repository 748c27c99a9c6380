"""Which requested names are per-machine boot configs: each loader's whole lookup chain, and names that are not."""

import pytest

from metalbus.contracts.common import Architecture
from metalbus_rack_tftp.boot_paths import (
    BootConfigPath,
    BootServer,
    BootstrapPath,
    Loader,
    LocalFallbackPath,
    MachineConfigPath,
    bootif_parameter,
    parse_boot_config_path,
)

MAC = "52:54:00:ab:cd:ef"
BIOS, UEFI, ARM = Architecture.AMD64_BIOS, Architecture.AMD64_UEFI, Architecture.ARM64_UEFI

# pxelinux's own order of tries, for UUID b8945908-d6a6-41a9-611d-74a6ab80b83d, MAC 52:54:00:ab:cd:ef and
# IP 192.168.2.91 (C0A8025B) — the example of the pxelinux documentation, with our MAC.
PXELINUX_CHAIN: list[tuple[str, BootConfigPath | None]] = [
    ("pxelinux.cfg/b8945908-d6a6-41a9-611d-74a6ab80b83d", None),
    ("pxelinux.cfg/01-52-54-00-ab-cd-ef", MachineConfigPath(Loader.PXELINUX, MAC, BIOS)),
    ("pxelinux.cfg/C0A8025B", None),
    ("pxelinux.cfg/C0A8025", None),
    ("pxelinux.cfg/C0A802", None),
    ("pxelinux.cfg/C0A80", None),
    ("pxelinux.cfg/C0A8", None),
    ("pxelinux.cfg/C0A", None),
    ("pxelinux.cfg/C0", None),
    ("pxelinux.cfg/C", None),
    ("pxelinux.cfg/default", LocalFallbackPath(Loader.PXELINUX)),
]

# GRUB 2.06's net config search (grub.info "Network"), then Debian's netboot image's own config, then ours.
GRUB_CHAIN: list[tuple[str, BootConfigPath | None]] = [
    ("grub/grub.cfg-7726a678-7fc0-4853-a4f6-c85ac36a120a", None),
    ("grub/grub.cfg-52-54-00-ab-cd-ef", BootstrapPath(Loader.GRUB)),
    ("grub/grub.cfg-0A000082", None),
    ("grub/grub.cfg-0A0", None),
    ("grub/grub.cfg-0", None),
    ("grub/grub.cfg", BootstrapPath(Loader.GRUB)),
    ("grub/x86_64-efi/grub.cfg", BootstrapPath(Loader.GRUB)),
    ("grub/arm64-efi/grub.cfg", BootstrapPath(Loader.GRUB)),
    ("grub/grub.cfg-52:54:00:ab:cd:ef-x86_64", MachineConfigPath(Loader.GRUB, MAC, UEFI)),
    ("grub/grub.cfg-52:54:00:ab:cd:ef-arm64", MachineConfigPath(Loader.GRUB, MAC, ARM)),
    ("grub/grub.cfg-52:54:00:ab:cd:ef", MachineConfigPath(Loader.GRUB, MAC, UEFI)),
]

IPXE_NAMES: list[tuple[str, BootConfigPath | None]] = [
    ("ipxe.cfg-52:54:00:ab:cd:ef", BootstrapPath(Loader.IPXE, MAC)),
    ("ipxe.cfg", BootstrapPath(Loader.IPXE, None)),
    ("ipxe.cfg-52:54:00:ab:cd:ef-x86_64-pcbios", MachineConfigPath(Loader.IPXE, MAC, BIOS)),
    ("ipxe.cfg-52:54:00:ab:cd:ef-i386-pcbios", MachineConfigPath(Loader.IPXE, MAC, BIOS)),
    ("ipxe.cfg-52:54:00:ab:cd:ef-x86_64-efi", MachineConfigPath(Loader.IPXE, MAC, UEFI)),
    ("ipxe.cfg-52:54:00:ab:cd:ef-arm64-efi", MachineConfigPath(Loader.IPXE, MAC, ARM)),
    ("ipxe.cfg-52:54:00:ab:cd:ef-i386-efi", None),  # 32-bit EFI: no boot resources for it
    ("ipxe.cfg-52%3A54%3A00%3Aab%3Acd%3Aef-x86_64-efi", MachineConfigPath(Loader.IPXE, MAC, UEFI)),
    ("ipxe.cfg-default-amd64", None),
]

VARIANTS: list[tuple[str, BootConfigPath | None]] = [
    ("/pxelinux.cfg/01-52-54-00-ab-cd-ef", MachineConfigPath(Loader.PXELINUX, MAC, BIOS)),
    ("pxelinux.cfg/01-52-54-00-AB-CD-EF", MachineConfigPath(Loader.PXELINUX, MAC, BIOS)),
    ("syslinux/pxelinux.cfg/01-52-54-00-ab-cd-ef", MachineConfigPath(Loader.PXELINUX, MAC, BIOS)),
    ("boot/grub/grub.cfg-52:54:00:ab:cd:ef-x86_64", MachineConfigPath(Loader.GRUB, MAC, UEFI)),
    ("grub.cfg", BootstrapPath(Loader.GRUB)),
]

NOT_BOOT_CONFIGS = [
    "lpxelinux.0",
    "ldlinux.c32",
    "bootx64.efi",
    "grubx64.efi",
    "images/amd64/ephemeral/vmlinuz",
    "pxelinux.cfg/01-52-54-00-ab-cd",  # a MAC one octet short
    "pxelinux.cfg/02-52-54-00-ab-cd-ef",  # not ARP type 1 (Ethernet)
    "pxelinux.cfg/01-52:54:00:ab:cd:ef",
    "pxelinux.cfg/../pxelinux.cfg/default",
    "grub/grub.cfg-52:54:00:ab:cd:ef-mips",
    "grub/grub.cfg.bak",
    "ipxe.cfg-52:54:00:ab:cd:ef-x86_64",
    "MAAS/metadata/latest/meta-data/instance-id",
    "",
]


@pytest.mark.parametrize(("path", "expected"), PXELINUX_CHAIN, ids=[p for p, _ in PXELINUX_CHAIN])
def test_pxelinux_chain_answers_only_the_mac_name_and_ends_in_local_boot(
    path: str, expected: BootConfigPath | None
) -> None:
    assert parse_boot_config_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), GRUB_CHAIN, ids=[p for p, _ in GRUB_CHAIN])
def test_grub_search_names_get_the_bootstrap_and_the_cpu_name_the_machine_config(
    path: str, expected: BootConfigPath | None
) -> None:
    assert parse_boot_config_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), IPXE_NAMES, ids=[p for p, _ in IPXE_NAMES])
def test_ipxe_names_map_buildarch_and_platform_to_architectures(path: str, expected: BootConfigPath | None) -> None:
    assert parse_boot_config_path(path) == expected


@pytest.mark.parametrize(("path", "expected"), VARIANTS, ids=[p for p, _ in VARIANTS])
def test_leading_slash_case_and_loader_subdirectories_do_not_matter(path: str, expected: BootConfigPath | None) -> None:
    assert parse_boot_config_path(path) == expected


@pytest.mark.parametrize("path", NOT_BOOT_CONFIGS)
def test_other_names_are_left_to_the_next_source(path: str) -> None:
    assert parse_boot_config_path(path) is None


def test_boot_server_urls_and_bootif_name_the_rack_port_and_nic() -> None:
    from ipaddress import IPv4Address

    server = BootServer(IPv4Address("10.20.0.2"), 8080)
    assert server.http_url("images/x/vmlinuz") == "http://10.20.0.2:8080/images/x/vmlinuz"
    assert bootif_parameter(MAC) == "BOOTIF=01-52-54-00-ab-cd-ef"
