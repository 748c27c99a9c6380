"""The fleet reads the boot configs rack-tftp renders, and the credentials on the region's kernel command line."""

from ipaddress import IPv4Address

import pytest

from metalbus.contracts.boot import BootConfig
from metalbus.contracts.common import Architecture
from metalbus.contracts.machines import BootPurpose
from metalbus.contracts.metadata import OAuthCredentials
from metalbus.fleet.boot_config import (
    BootConfigError,
    grub_location,
    metadata_access,
    parse_grub_config,
    parse_pxelinux_config,
)
from metalbus_rack_tftp.boot_paths import BootServer
from metalbus_rack_tftp.render_grub import render_grub_config
from metalbus_rack_tftp.render_pxelinux import render_pxelinux_config
from metalbus_region.kernel_command_line import commissioning_parameters, render_kernel_command_line

RACK = IPv4Address("10.20.0.2")
MAC = "02:0b:00:00:00:07"
CREDENTIALS = OAuthCredentials(consumer_key="ck-1", token_key="tk-1", token_secret="secret-1")


def commissioning_config() -> BootConfig:
    line = render_kernel_command_line("console=ttyS0", commissioning_parameters(RACK, "abc123", CREDENTIALS, 5248))
    return BootConfig(
        system_id="abc123",
        purpose=BootPurpose.COMMISSIONING,
        kernel="images/fleet/vmlinuz",
        initrd="images/fleet/initrd.img",
        squashfs=None,
        kernel_command_line=line,
    )


def test_a_pxelinux_config_gives_kernel_initrd_and_the_command_line() -> None:
    text = render_pxelinux_config(commissioning_config(), mac=MAC, server=BootServer(RACK, 5248))
    boot = parse_pxelinux_config(text)
    assert boot.kernel == "http://10.20.0.2:5248/images/fleet/vmlinuz"
    assert boot.initrd == "http://10.20.0.2:5248/images/fleet/initrd.img"
    assert "BOOTIF=01-02-0b-00-00-00-07" in boot.command_line.split()


def test_a_grub_config_gives_urls_for_its_http_devices() -> None:
    config = commissioning_config()
    text = render_grub_config(config, mac=MAC, architecture=Architecture.AMD64_UEFI, server=BootServer(RACK, 5248))
    boot = parse_grub_config(text)
    assert boot.kernel == "http://10.20.0.2:5248/images/fleet/vmlinuz"
    assert boot.initrd == "http://10.20.0.2:5248/images/fleet/initrd.img"
    assert metadata_access(boot.command_line) == metadata_access(config.kernel_command_line)


def test_the_command_line_gives_the_metadata_url_and_credentials() -> None:
    access = metadata_access(commissioning_config().kernel_command_line)
    assert access.url == "http://10.20.0.2:5248/MAAS/metadata/"
    assert (access.consumer_key, access.token_key, access.token_secret) == ("ck-1", "tk-1", "secret-1")
    assert access.system_id == "abc123"


def test_a_command_line_without_credentials_is_refused() -> None:
    with pytest.raises(BootConfigError, match=r"metalbus\.token_secret"):
        metadata_access("console=ttyS0 metalbus.metadata_url=http://x/ metalbus.consumer_key=a metalbus.token_key=b")


def test_a_local_boot_config_names_no_kernel() -> None:
    local = BootConfig(
        system_id="abc123", purpose=BootPurpose.LOCAL, kernel=None, initrd=None, squashfs=None, kernel_command_line=""
    )
    with pytest.raises(BootConfigError):
        parse_pxelinux_config(render_pxelinux_config(local, mac=MAC, server=BootServer(RACK, 5248)))
    with pytest.raises(BootConfigError):
        parse_grub_config(
            render_grub_config(local, mac=MAC, architecture=Architecture.AMD64_UEFI, server=BootServer(RACK))
        )


def test_grub_paths_without_an_http_device_are_left_as_they_are() -> None:
    assert grub_location("(tftp,10.0.0.2)/x") == "(tftp,10.0.0.2)/x"
    assert grub_location("(http,10.0.0.2:80)/a/b") == "http://10.0.0.2:80/a/b"
