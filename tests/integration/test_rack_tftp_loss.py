"""rack-tftp completes transfers over a lossy link: a veth pair with ``tc netem loss`` on both ends.

The server runs in-process in the root namespace, bound to 0.0.0.0 (so each request's local address comes from
IP_PKTINFO); the client runs in a namespace made for the test, on the other end of the veth. 5 % of the packets in
each direction are dropped, so DATA and ACKs are both lost: by ``tc netem loss`` on both veth ends when the kernel
has sch_netem, else (kernels built without it, like this project's CI VM) by an nftables ``numgen random`` rule on
the input and output hooks of the client's namespace. The namespace (and its rules) and the veth are removed in
teardown.
"""

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.sources import FirstThatServes
from metalbus_rack_tftp.tftp_codec import Opcode
from metalbus_rack_tftp.tftp_server import TftpServer, TftpServerSettings, serve_tftp
from tests.integration.test_rack_tftp_clients import DYNAMIC_NAME, PerMachineConfigs, run

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and tc need root"),
    pytest.mark.skipif(
        None in (shutil.which("ip"), shutil.which("tc"), shutil.which("atftp")),
        reason="iproute2 (ip, tc) and atftp are needed",
    ),
]
LOSS_PERCENT = 5
FILE_SIZE = 2 * 1024 * 1024 + 333
TRANSFER_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class LossyLink:
    namespace: str
    server_interface: str
    server_address: str


def run_sync(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=10).stdout


def unused_prefix() -> str:
    """A 10.78.<n> that no route of the root namespace uses (other runs may hold some)."""
    routes = run_sync("ip", "-4", "route", "show")
    free = [n for n in range(1, 255) if f"10.78.{n}." not in routes]
    return f"10.78.{secrets.choice(free)}"


def lose_packets(namespace: str, server_if: str, client_if: str) -> None:
    """netem on both ends, or nftables on both ends' ingress; skips the test when neither is available.

    Drops happen where the packet arrives, not where it leaves: a drop in a sender's output hook would fail its
    ``sendto`` with EPERM, which curl takes for a fatal error, and a real lossy link says nothing to the sender.
    """
    netem = ("root", "netem", "loss", f"{LOSS_PERCENT}%")
    try:
        run_sync("tc", "qdisc", "add", "dev", server_if, *netem)
        run_sync("ip", "netns", "exec", namespace, "tc", "qdisc", "add", "dev", client_if, *netem)
        return
    except subprocess.CalledProcessError:
        pass  # no sch_netem in this kernel
    if shutil.which("nft") is None:
        pytest.skip("neither tc netem (sch_netem) nor nft (apt-get install nftables) can drop packets here")
    for prefix, interface in ((("ip", "netns", "exec", namespace), client_if), ((), server_if)):
        subprocess.run([*prefix, "nft", "-f", "-"], input=ingress_loss(interface), check=True, text=True, timeout=10)


def ingress_loss(interface: str) -> str:
    """An nftables table (named after the interface) dropping LOSS_PERCENT % of the DATA and ACK packets
    ``interface`` receives. The option handshake (OACK, ACK 0) is spared: atftp aborts with "unexpected OACK" when
    an OACK is retransmitted after its ACK 0 was lost, instead of acknowledging it again (a client bug; the
    server's OACK retransmission is tested with raw packets in test_rack_tftp_clients.py)."""
    random = f"numgen random mod 100 < {LOSS_PERCENT} drop"
    data = f"meta l4proto udp @th,64,16 {int(Opcode.DATA)} {random}"
    acks = f"meta l4proto udp @th,64,16 {int(Opcode.ACK)} @th,80,16 != 0 {random}"
    hook = f"type filter hook ingress device {interface} priority 0;"
    return f"table netdev {interface} {{\n chain lose {{\n {hook}\n {data}\n {acks}\n }}\n}}\n"


@pytest.fixture
def lossy_link() -> Iterator[LossyLink]:
    suffix = secrets.token_hex(3)
    namespace, server_if, client_if = f"mbtn{suffix}", f"mbts{suffix}", f"mbtc{suffix}"
    prefix = unused_prefix()
    try:
        run_sync("ip", "netns", "add", namespace)
        run_sync("ip", "link", "add", server_if, "type", "veth", "peer", "name", client_if, "netns", namespace)
        run_sync("ip", "addr", "add", f"{prefix}.1/24", "dev", server_if)
        run_sync("ip", "link", "set", server_if, "up")
        run_sync("ip", "-n", namespace, "addr", "add", f"{prefix}.2/24", "dev", client_if)
        run_sync("ip", "-n", namespace, "link", "set", "lo", "up")
        run_sync("ip", "-n", namespace, "link", "set", client_if, "up")
        lose_packets(namespace, server_if, client_if)
        yield LossyLink(namespace, server_if, f"{prefix}.1")
    finally:
        for command in (
            ("nft", "delete", "table", "netdev", server_if),
            ("ip", "link", "del", server_if),
            ("ip", "netns", "del", namespace),
        ):
            with contextlib.suppress(subprocess.SubprocessError, FileNotFoundError):
                run_sync(*command)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[TftpServer, Path]]:
    root = tmp_path / "boot"
    root.mkdir()
    settings = TftpServerSettings(retry_timeout_s=0.2, max_retry_timeout_s=1.0, max_retries=15)
    serving = await serve_tftp("0.0.0.0", 0, FirstThatServes([PerMachineConfigs(), StaticBootRoot(root)]), settings)
    try:
        yield serving, root
    finally:
        serving.close()


async def in_namespace(link: LossyLink, *argv: str) -> tuple[int, str]:
    return await run("ip", "netns", "exec", link.namespace, *argv, timeout=TRANSFER_TIMEOUT_S)


async def test_a_windowed_download_completes_byte_identical_despite_loss_on_both_ends(
    lossy_link: LossyLink, server: tuple[TftpServer, Path], tmp_path: Path
) -> None:
    tftp, root = server
    content = os.urandom(FILE_SIZE)
    (root / "initrd").write_bytes(content)
    local = tmp_path / "initrd"
    options = ("--tftp-timeout", "1", "--option", "blksize 1468", "--option", "tsize 0", "--option", "windowsize 16")
    status, output = await in_namespace(
        lossy_link, "atftp", "-g", "-r", "initrd", "-l", str(local), *options, lossy_link.server_address, str(tftp.port)
    )
    assert status == 0, output
    assert local.read_bytes() == content
    assert tftp.counters.retransmits > 0  # the client's last ACK may be lost too: completion is not asserted


async def test_a_lockstep_download_completes_and_a_dynamic_file_names_the_address_the_client_reached(
    lossy_link: LossyLink, server: tuple[TftpServer, Path], tmp_path: Path
) -> None:
    """atftp asks no ``timeout`` (curl asks 6 s, and RFC 2349 makes the server wait that long for each loss).
    atftp re-acknowledges a duplicate block only once: ``--tftp-timeout 1`` makes it resend its ACK after 1 s
    of silence rather than its default 5 s, when that one extra ACK was lost too."""
    tftp, root = server
    content = os.urandom(FILE_SIZE // 4)
    (root / "lpxelinux.0").write_bytes(content)
    for name, expected in (("lpxelinux.0", content), (DYNAMIC_NAME, None)):
        local = tmp_path / name.replace("/", "_")
        get = ("atftp", "-g", "-r", name, "-l", str(local), "--tftp-timeout", "1", "--option", "blksize 1468")
        status, output = await in_namespace(lossy_link, *get, lossy_link.server_address, str(tftp.port))
        assert status == 0, output
        if expected is not None:
            assert local.read_bytes() == expected
        else:
            assert f"url=http://{lossy_link.server_address}:5248/".encode() in local.read_bytes()
    assert tftp.counters.retransmits > 0
