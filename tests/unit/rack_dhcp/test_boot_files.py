"""The boot-file table: every architecture, PXE, iPXE and UEFI HTTP boot clients, and clients that boot nothing."""

from ipaddress import IPv4Address

import pytest

from metalbus_rack_dhcp.boot_files import BootChoice, BootClient, choose_boot, is_ipxe_user_class, read_boot_client
from metalbus_rack_dhcp.messages import BOOTREQUEST, DhcpMessage, Option

RACK = IPv4Address("10.20.0.2")
PXE_VENDOR = b"PXEClient:Arch:00000:UNDI:002001"
HTTP_VENDOR = b"HTTPClient:Arch:00016:UNDI:003001"

# Written out here rather than imported, so that a change to the module's table has to be made twice.
EXPECTED_TFTP_FILES = {0: "lpxelinux.0", 7: "bootx64.efi", 9: "bootx64.efi", 11: "grubaa64.efi"}
EXPECTED_HTTP_URLS = {
    16: "http://10.20.0.2:5248/images/bootx64.efi",
    19: "http://10.20.0.2:5248/images/grubaa64.efi",
}
IPXE_SCRIPT = BootChoice(file="http://10.20.0.2:5248/ipxe.cfg-${mac}", ipxe_options=bytes((176, 1, 1)))


def tftp(name: str) -> BootChoice:
    return BootChoice(file=name, tftp_server_name="10.20.0.2")


def http(url: str) -> BootChoice:
    return BootChoice(file=url, vendor_class=b"HTTPClient")


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        pytest.param(BootClient(architecture=0, vendor_class=PXE_VENDOR), tftp("lpxelinux.0"), id="bios"),
        pytest.param(BootClient(architecture=0), tftp("lpxelinux.0"), id="bios-without-vendor-class"),
        pytest.param(BootClient(vendor_class=PXE_VENDOR), tftp("lpxelinux.0"), id="pxeclient-without-93-is-bios"),
        pytest.param(BootClient(architecture=7), tftp("bootx64.efi"), id="x86-64-efi"),
        pytest.param(BootClient(architecture=9), tftp("bootx64.efi"), id="x86-64-efi-bc"),
        pytest.param(BootClient(architecture=11), tftp("grubaa64.efi"), id="arm64-efi"),
        pytest.param(BootClient(architecture=6), None, id="ia32-efi-has-no-loader"),
        pytest.param(BootClient(architecture=10), None, id="arm32-efi-has-no-loader"),
        pytest.param(BootClient(architecture=16), None, id="http-arch-without-httpclient-vendor-class"),
        pytest.param(
            BootClient(architecture=16, vendor_class=HTTP_VENDOR),
            http("http://10.20.0.2:5248/images/bootx64.efi"),
            id="x86-64-http-boot",
        ),
        pytest.param(
            BootClient(architecture=19, vendor_class=b"HTTPClient:Arch:00019"),
            http("http://10.20.0.2:5248/images/grubaa64.efi"),
            id="arm64-http-boot",
        ),
        pytest.param(BootClient(architecture=7, vendor_class=HTTP_VENDOR), None, id="httpclient-with-tftp-arch"),
        pytest.param(BootClient(vendor_class=HTTP_VENDOR), None, id="httpclient-without-93"),
        pytest.param(BootClient(architecture=0, vendor_class=PXE_VENDOR, ipxe=True), IPXE_SCRIPT, id="ipxe-bios"),
        pytest.param(BootClient(architecture=7, ipxe=True), IPXE_SCRIPT, id="ipxe-efi"),
        pytest.param(BootClient(architecture=11, ipxe=True), IPXE_SCRIPT, id="ipxe-arm64"),
        pytest.param(BootClient(ipxe=True), IPXE_SCRIPT, id="ipxe-without-93"),
        pytest.param(BootClient(), None, id="not-a-network-boot-client"),
        pytest.param(BootClient(vendor_class=b"MSFT 5.0"), None, id="ordinary-vendor-class"),
    ],
)
def test_boot_file_follows_the_table(client: BootClient, expected: BootChoice | None) -> None:
    assert choose_boot(client, RACK, 5248) == expected


def test_every_architecture_over_pxe_gets_its_loader_or_nothing() -> None:
    choices = {
        architecture: choose_boot(BootClient(architecture=architecture, vendor_class=PXE_VENDOR), RACK, 5248)
        for architecture in range(0x10000)
    }
    assert {architecture: choice for architecture, choice in choices.items() if choice is not None} == {
        architecture: tftp(name) for architecture, name in EXPECTED_TFTP_FILES.items()
    }


def test_every_architecture_over_http_gets_its_loader_or_nothing() -> None:
    choices = {
        architecture: choose_boot(BootClient(architecture=architecture, vendor_class=HTTP_VENDOR), RACK, 5248)
        for architecture in range(0x10000)
    }
    assert {architecture: choice for architecture, choice in choices.items() if choice is not None} == {
        architecture: http(url) for architecture, url in EXPECTED_HTTP_URLS.items()
    }


def test_urls_use_the_rack_address_and_http_port_given() -> None:
    other_rack = IPv4Address("192.168.7.1")
    assert choose_boot(BootClient(ipxe=True), other_rack, 15248) == BootChoice(
        file="http://192.168.7.1:15248/ipxe.cfg-${mac}", ipxe_options=bytes((176, 1, 1))
    )
    assert choose_boot(BootClient(architecture=19, vendor_class=HTTP_VENDOR), other_rack, 15248) == http(
        "http://192.168.7.1:15248/images/grubaa64.efi"
    )
    assert choose_boot(BootClient(architecture=7), other_rack, 15248) == BootChoice(
        file="bootx64.efi", tftp_server_name="192.168.7.1"
    )


def request_with(*options: tuple[int, bytes]) -> DhcpMessage:
    return DhcpMessage(op=BOOTREQUEST, xid=1, chaddr=bytes(16), options=((Option.MESSAGE_TYPE, b"\x01"), *options))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param((), BootClient(), id="nothing"),
        pytest.param(((93, b"\x00\x07"),), BootClient(architecture=7), id="one-architecture"),
        pytest.param(((93, b"\x00\x0b\x00\x07"),), BootClient(architecture=11), id="first-of-several"),
        pytest.param(((93, b"\x01\x00"),), BootClient(architecture=256), id="big-endian"),
        pytest.param(((93, b"\x07"),), BootClient(), id="truncated-93-counts-as-absent"),
        pytest.param(((60, PXE_VENDOR),), BootClient(vendor_class=PXE_VENDOR), id="vendor-class"),
        pytest.param(((77, b"iPXE"),), BootClient(ipxe=True), id="ipxe-bare-user-class"),
        pytest.param(
            ((93, b"\x00\x00"), (60, PXE_VENDOR), (77, b"\x04iPXE")),
            BootClient(architecture=0, vendor_class=PXE_VENDOR, ipxe=True),
            id="ipxe-rfc3004-user-class-with-the-rest",
        ),
    ],
)
def test_boot_client_is_read_from_options_93_60_and_77(
    options: tuple[tuple[int, bytes], ...], expected: BootClient
) -> None:
    assert read_boot_client(request_with(*options)) == expected


@pytest.mark.parametrize(
    ("payload", "is_ipxe"),
    [
        (b"iPXE", True),
        (b"\x04iPXE", True),
        (b"\x05gPXE1\x04iPXE", True),
        (b"ipxe", False),
        (b"\x05iPXE2", False),
        (b"iPXE-ish", False),
        (b"\x09iPXE", False),
        (b"", False),
    ],
)
def test_ipxe_is_recognised_in_bare_or_rfc3004_user_class(payload: bytes, is_ipxe: bool) -> None:
    assert is_ipxe_user_class(payload) is is_ipxe
