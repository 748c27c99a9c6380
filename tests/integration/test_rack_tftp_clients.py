"""rack-tftp serves real TFTP clients (tftp-hpa ``tftp``, ``atftp``, ``curl tftp://``) on a loopback high port.

The server runs in-process on 127.0.0.1 with a free port, serving a chain of a per-machine source (a MemoryFile,
as the rendered boot configs will be) in front of a static boot root in a temporary directory. Files downloaded
are compared byte for byte; refusals are checked in what the client reports and in the server's counters.
Protocol rules no client can be made to exercise (wrong transfer ID, duplicate ACKs, a vanished client, the
concurrency bound) are checked with a UDP socket speaking raw packets built by the codec.
"""

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalbus_rack_tftp.boot_root import StaticBootRoot
from metalbus_rack_tftp.sources import FileRefused, FirstThatServes, MemoryFile, OpenedFile, RefusalReason, Requester
from metalbus_rack_tftp.tftp_codec import Opcode, encode_ack, encode_request
from metalbus_rack_tftp.tftp_server import TftpServer, TftpServerSettings, serve_tftp

TFTP, ATFTP, CURL = shutil.which("tftp"), shutil.which("atftp"), shutil.which("curl")
pytestmark = pytest.mark.skipif(
    None in (TFTP, ATFTP, CURL), reason="tftp-hpa, atftp and curl are needed (scripts/setup.sh installs them)"
)
CLIENT_TIMEOUT_S = 30.0
SMALL_SIZE = 46 * 1024 + 123
MEDIUM_SIZE = 3 * 1024 * 1024 + 7
DYNAMIC_NAME = "pxelinux.cfg/01-52-54-00-12-34-56"


async def run(*argv: str, timeout: float = CLIENT_TIMEOUT_S) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"{argv} did not finish within {timeout}s") from None
    return process.returncode or 0, output.decode(errors="replace")


class PerMachineConfigs:
    """A dynamic source: one rendered config naming the rack address the request reached; NOT_FOUND otherwise."""

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        if path != DYNAMIC_NAME:
            raise FileRefused(RefusalReason.NOT_FOUND, f"no config {path}")
        return MemoryFile(f"DEFAULT local\nAPPEND url=http://{requester.local_address}:5248/\n".encode())


@dataclass
class Served:
    server: TftpServer
    root: Path
    files: dict[str, bytes]

    @property
    def port(self) -> str:
        return str(self.server.port)


def populate_boot_root(root: Path) -> dict[str, bytes]:
    files = {
        "lpxelinux.0": os.urandom(SMALL_SIZE),
        "images/kernel": os.urandom(MEDIUM_SIZE),
        "exact-blocks.bin": os.urandom(512 * 8),
        "empty.bin": b"",
        "grub/grub.cfg": b"set default=0\nset timeout=1\r\nmenuentry x {\n}\n",
    }
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    (root.parent / "secret").write_bytes(b"root:x:0:0\n")
    (root / "escape").symlink_to(root.parent / "secret")
    return files


async def start(tmp_path: Path, settings: TftpServerSettings) -> Served:
    root = tmp_path / "boot"
    root.mkdir()
    files = populate_boot_root(root)
    source = FirstThatServes([PerMachineConfigs(), StaticBootRoot(root)])
    return Served(await serve_tftp("127.0.0.1", 0, source, settings), root, files)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    serving = await start(tmp_path, TftpServerSettings())
    try:
        yield serving
    finally:
        serving.server.close()


# -- real clients ---------------------------------------------------------------------------------------------
def client_command(client: str, port: str, remote: str, local: Path) -> list[str]:
    commands = {
        "tftp-hpa": ["tftp", "-m", "binary", "127.0.0.1", port, "-c", "get", remote, str(local)],
        "atftp": ["atftp", "-g", "-r", remote, "-l", str(local), "127.0.0.1", port],
        "atftp-options": [
            *["atftp", "-g", "-r", remote, "-l", str(local), "--option", "blksize 1468"],
            *["--option", "tsize 0", "--option", "windowsize 16", "127.0.0.1", port],
        ],
        "curl": ["curl", "-sS", "-o", str(local), f"tftp://127.0.0.1:{port}/{remote}"],
        "curl-blksize": [
            "curl",
            "-sS",
            "--tftp-blksize",
            "1468",
            "-o",
            str(local),
            f"tftp://127.0.0.1:{port}/{remote}",
        ],
    }
    return commands[client]


CLIENTS = ["tftp-hpa", "atftp", "atftp-options", "curl", "curl-blksize"]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("name", ["lpxelinux.0", "images/kernel", "exact-blocks.bin"])
async def test_each_client_downloads_static_files_byte_identical(
    served: Served, tmp_path: Path, client: str, name: str
) -> None:
    local = tmp_path / "downloaded"
    status, output = await run(*client_command(client, served.port, name, local))
    assert status == 0, output
    assert local.read_bytes() == served.files[name]
    assert served.server.counters.transfers_completed == 1
    assert served.server.active_transfers == 0


async def test_an_empty_file_is_one_empty_block(served: Served, tmp_path: Path) -> None:
    local = tmp_path / "downloaded"
    status, output = await run(*client_command("curl", served.port, "empty.bin", local))
    assert status == 0, output
    assert local.read_bytes() == b""


async def test_tftp_hpa_in_netascii_mode_gets_the_text_back_unchanged(served: Served, tmp_path: Path) -> None:
    local = tmp_path / "grub.cfg"
    status, output = await run("tftp", "127.0.0.1", served.port, "-c", "get", "grub/grub.cfg", str(local))
    assert status == 0, output
    assert local.read_bytes() == served.files["grub/grub.cfg"]


@pytest.mark.parametrize("client", ["tftp-hpa", "atftp-options", "curl"])
async def test_a_dynamic_file_comes_from_the_source_in_front_of_the_boot_root(
    served: Served, tmp_path: Path, client: str
) -> None:
    local = tmp_path / "config"
    status, output = await run(*client_command(client, served.port, DYNAMIC_NAME, local))
    assert status == 0, output
    assert local.read_bytes() == b"DEFAULT local\nAPPEND url=http://127.0.0.1:5248/\n"


@pytest.mark.slow
async def test_a_file_over_32_mib_at_512_byte_blocks_rolls_block_numbers_over(served: Served, tmp_path: Path) -> None:
    content = os.urandom(33 * 1024 * 1024 + 100)
    (served.root / "rootfs.img").write_bytes(content)
    local = tmp_path / "rootfs.img"
    url = f"tftp://127.0.0.1:{served.port}/rootfs.img"
    status, output = await run("curl", "-sS", "--tftp-blksize", "512", "-o", str(local), url, timeout=120)
    assert status == 0, output
    assert local.read_bytes() == content
    assert served.server.counters.transfers_completed == 1


async def test_twenty_concurrent_downloads_are_all_byte_identical(served: Served, tmp_path: Path) -> None:
    clients = [CLIENTS[index % len(CLIENTS)] for index in range(20)]
    locals_ = [tmp_path / f"download-{index}" for index in range(20)]
    outcomes = await asyncio.gather(
        *(
            run(*client_command(client, served.port, "images/kernel", local))
            for client, local in zip(clients, locals_, strict=True)
        )
    )
    assert [status for status, _ in outcomes] == [0] * 20, outcomes
    assert all(local.read_bytes() == served.files["images/kernel"] for local in locals_)
    assert served.server.counters.transfers_completed == 20
    assert served.server.active_transfers == 0


# -- refusals -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("remote", "error", "reason"),
    [
        ("../secret", "Error code 2", "access-violation"),
        ("grub/../../secret", "Error code 2", "access-violation"),
        ("escape", "Error code 2", "access-violation"),
        ("//etc/passwd", "Error code 2", "access-violation"),
        ("n" * 300, "Error code 2", "access-violation"),
        ("/etc/passwd", "Error code 1", "not-found"),
        ("missing.cfg", "Error code 1", "not-found"),
    ],
)
async def test_paths_outside_the_boot_root_are_refused_with_an_error_the_client_reports(
    served: Served, tmp_path: Path, remote: str, error: str, reason: str
) -> None:
    local = tmp_path / "leaked"
    _, output = await run(*client_command("tftp-hpa", served.port, remote, local))
    assert error in output
    assert not local.exists() or local.read_bytes() == b""
    assert served.server.counters.refused == {reason: 1}
    assert served.server.counters.transfers_completed == 0


async def test_curl_reports_a_missing_file_as_tftp_not_found(served: Served, tmp_path: Path) -> None:
    status, _ = await run(*client_command("curl", served.port, "missing.cfg", tmp_path / "x"))
    assert status == 68  # CURLE_TFTP_NOTFOUND
    assert served.server.counters.refused == {"not-found": 1}


async def test_a_write_request_is_refused_with_an_access_violation(served: Served, tmp_path: Path) -> None:
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"payload")
    _, output = await run("tftp", "-m", "binary", "127.0.0.1", served.port, "-c", "put", str(upload), "upload.bin")
    assert "Error code 2: read-only server" in output
    assert not (served.root / "upload.bin").exists()
    assert served.server.counters.refused == {"write-request": 1}


# -- protocol rules, with raw packets -------------------------------------------------------------------------
class RawClient(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    async def receive(self, timeout: float = 5.0) -> tuple[bytes, int]:
        data, addr = await asyncio.wait_for(self.received.get(), timeout)
        return data, addr[1]

    async def silent_for(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.received.get(), seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@pytest.fixture
async def raw_clients() -> AsyncIterator[list[RawClient]]:
    loop = asyncio.get_running_loop()
    clients: list[RawClient] = []
    for _ in range(2):
        _, client = await loop.create_datagram_endpoint(RawClient, local_addr=("127.0.0.1", 0))
        clients.append(client)
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


@pytest.fixture
async def quick_retries(tmp_path: Path) -> AsyncIterator[Served]:
    settings = TftpServerSettings(
        max_concurrent_transfers=1, retry_timeout_s=0.1, max_retry_timeout_s=0.2, max_retries=2
    )
    serving = await start(tmp_path, settings)
    try:
        yield serving
    finally:
        serving.server.close()


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def read_request(name: str) -> bytes:
    return encode_request(Opcode.RRQ, name, "octet")


def data_block(number: int) -> bytes:
    return Opcode.DATA.to_bytes(2, "big") + number.to_bytes(2, "big")


async def test_each_transfer_gets_its_own_port_and_a_stranger_there_gets_error_5(
    served: Served, raw_clients: list[RawClient]
) -> None:
    client, stranger = raw_clients
    client.send(read_request("lpxelinux.0"), served.server.port)
    first, transfer_port = await client.receive()
    assert transfer_port != served.server.port
    assert first[:4] == data_block(1)
    stranger.send(encode_ack(1), transfer_port)
    error, from_port = await stranger.receive()
    assert (error[:4], from_port) == (b"\x00\x05\x00\x05", transfer_port)
    received = bytearray(first[4:])
    block = 1
    while True:
        client.send(encode_ack(block), transfer_port)
        data, _ = await client.receive()
        block += 1
        assert data[:4] == data_block(block)
        received += data[4:]
        if len(data) - 4 < 512:
            break
    client.send(encode_ack(block), transfer_port)
    assert bytes(received) == served.files["lpxelinux.0"]
    await until(lambda: served.server.active_transfers == 0)
    assert served.server.counters.unknown_transfer_ids == 1
    assert (served.server.counters.transfers_completed, served.server.counters.retransmits) == (1, 0)


async def test_a_duplicate_ack_does_not_resend_the_next_block(served: Served, raw_clients: list[RawClient]) -> None:
    client, _ = raw_clients
    client.send(read_request("lpxelinux.0"), served.server.port)
    _, port = await client.receive()
    client.send(encode_ack(1), port)
    client.send(encode_ack(1), port)
    second, _ = await client.receive()
    assert second[:4] == data_block(2)
    assert await client.silent_for(0.4)  # the retry timeout is 1 s: nothing but a second DATA 2 could arrive
    assert served.server.counters.retransmits == 0


async def test_a_vanished_client_is_retried_with_backoff_then_its_transfer_is_freed(
    quick_retries: Served, raw_clients: list[RawClient]
) -> None:
    client, _ = raw_clients
    client.send(read_request("lpxelinux.0"), quick_retries.server.port)
    loop = asyncio.get_running_loop()
    arrivals = []
    for _ in range(3):
        data, _ = await client.receive()
        assert data[:4] == data_block(1)
        arrivals.append(loop.time())
    assert await client.silent_for(0.5)
    assert arrivals[2] - arrivals[1] > 1.5 * (arrivals[1] - arrivals[0])  # 0.2 s after 0.1 s
    counters = quick_retries.server.counters
    assert (counters.retransmits, counters.transfers_failed) == (2, {"timeout": 1})
    assert quick_retries.server.active_transfers == 0


async def test_over_the_concurrency_bound_a_request_is_dropped_until_a_slot_frees(
    quick_retries: Served, raw_clients: list[RawClient]
) -> None:
    holder, waiting = raw_clients
    holder.send(read_request("lpxelinux.0"), quick_retries.server.port)
    await holder.receive()
    waiting.send(read_request("grub/grub.cfg"), quick_retries.server.port)
    assert await waiting.silent_for(0.2)
    assert quick_retries.server.counters.dropped == {"busy": 1}
    await until(lambda: quick_retries.server.active_transfers == 0)  # the holder vanished: 0.1 + 0.2 + 0.2 s
    assert quick_retries.server.counters.transfers_failed == {"timeout": 1}
    waiting.send(read_request("grub/grub.cfg"), quick_retries.server.port)
    data, _ = await waiting.receive()
    assert data == data_block(1) + quick_retries.files["grub/grub.cfg"]


async def test_malformed_datagrams_and_nul_smuggled_names_are_dropped_or_refused_and_counted(
    served: Served, raw_clients: list[RawClient], tmp_path: Path
) -> None:
    client, _ = raw_clients
    for garbage in (b"\x00", b"\x00\x01no-terminator", b"\x00\x09what", b"\x00\x04\x00"):
        client.send(garbage, served.server.port)
    client.send(b"\x00\x01pxelinux.0\x00../../etc/passwd\x00", served.server.port)
    error, _ = await client.receive()
    assert error[:4] == b"\x00\x05\x00\x04"  # the name ends at the NUL: what follows is an illegal mode
    assert served.server.counters.dropped == {"malformed": 4}
    assert served.server.counters.refused == {"mode": 1}
    local = tmp_path / "still-serving"
    status, output = await run(*client_command("curl", served.port, "lpxelinux.0", local))
    assert status == 0, output
    assert local.read_bytes() == served.files["lpxelinux.0"]


async def test_an_unacknowledged_oack_is_resent_and_ack_0_starts_the_data(
    quick_retries: Served, raw_clients: list[RawClient]
) -> None:
    client, _ = raw_clients
    client.send(encode_request(Opcode.RRQ, "lpxelinux.0", "octet", {"blksize": "1024"}), quick_retries.server.port)
    first, port = await client.receive()
    again, _ = await client.receive()
    assert first == again == b"\x00\x06blksize\x001024\x00"
    client.send(encode_ack(0), port)
    data, _ = await client.receive()
    assert data == data_block(1) + quick_retries.files["lpxelinux.0"][:1024]
    assert quick_retries.server.counters.retransmits == 1


async def test_a_window_follows_the_acknowledged_block_even_in_the_middle_of_the_previous_window(
    served: Served, raw_clients: list[RawClient]
) -> None:
    client, _ = raw_clients
    client.send(encode_request(Opcode.RRQ, "lpxelinux.0", "octet", {"windowsize": "4"}), served.server.port)
    option_ack, port = await client.receive()
    assert option_ack == b"\x00\x06windowsize\x004\x00"
    client.send(encode_ack(0), port)
    first_window = [(await client.receive())[0][:4] for _ in range(4)]
    assert first_window == [data_block(number) for number in (1, 2, 3, 4)]
    assert await client.silent_for(0.2)  # a whole window, then the server waits for an ACK
    client.send(encode_ack(2), port)  # as a client does when block 3 was lost
    second_window = [(await client.receive())[0][:4] for _ in range(4)]
    assert second_window == [data_block(number) for number in (3, 4, 5, 6)]


class RegionBackAfter:
    """A per-machine config whose region gives no answer to the first ``silent`` requests, then answers."""

    def __init__(self, silent: int) -> None:
        self.silent = silent
        self.asked = 0

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        if path != DYNAMIC_NAME:
            raise FileRefused(RefusalReason.NOT_FOUND, f"no config {path}")
        self.asked += 1
        if self.asked <= self.silent:
            raise FileRefused(RefusalReason.REGION_SILENT, "no reply on region.boot.config within 2s")
        return MemoryFile(b"DEFAULT local\n")


async def test_while_the_region_is_silent_a_config_request_gets_no_answer_and_its_retransmission_is_served(
    raw_clients: list[RawClient], tmp_path: Path
) -> None:
    source = RegionBackAfter(silent=1)
    server = await serve_tftp("127.0.0.1", 0, source, TftpServerSettings())
    try:
        client, _ = raw_clients
        client.send(read_request(DYNAMIC_NAME), server.port)
        silent = await client.silent_for(0.3)
        client.send(read_request(DYNAMIC_NAME), server.port)  # a loader's retransmission
        data, _ = await client.receive()
        # tftp-hpa, told to retransmit every second, rides out a silent region the same way.
        source.asked, source.silent = 0, 1
        local = tmp_path / "config"
        commands = f"binary\nrexmt 1\nget {DYNAMIC_NAME} {local}\nquit\n"
        process = await asyncio.create_subprocess_exec(
            "tftp", "127.0.0.1", str(server.port), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        await asyncio.wait_for(process.communicate(commands.encode()), 20)
    finally:
        server.close()

    assert silent
    assert data == data_block(1) + b"DEFAULT local\n"
    assert server.counters.dropped["region-silent"] == 2
    assert "region-silent" not in server.counters.refused
    assert local.read_bytes() == b"DEFAULT local\n"
