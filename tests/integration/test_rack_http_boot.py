"""The rack's HTTP boot server on a loopback high port, fetched with curl: whole files, ranges, refusals, /MAAS.

The server runs in-process over a chain of test sources shaped like the rack's (rendered files first, then a
directory): the directory source here does NOT confine paths, so a traversal that is refused is refused by the
HTTP server itself. The memory test runs the server in a child process and reads its peak RSS from /proc.
"""

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from metalbus_rack_tftp.http_boot import CHUNK_SIZE, HttpBootServer, serve_http_boot
from metalbus_rack_tftp.sources import (
    FileRefused,
    FirstThatServes,
    MemoryFile,
    OpenedFile,
    RefusalReason,
    Requester,
)

CURL = shutil.which("curl")
QEMU = shutil.which("qemu-system-x86_64")
IPXE_ROM = Path("/usr/lib/ipxe/qemu/pxe-e1000.rom")
QEMU_TIMEOUT_S = 120.0
CURL_TIMEOUT_S = 60.0
BIG_SIZE = 20 * 1024 * 1024
SPARSE_SIZE = 200 * 1024 * 1024
MAC = "52:54:00:12:34:56"

pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed (scripts/setup.sh installs it)")


@dataclass
class DiskFile:
    """A file read with pread; records every read's length."""

    path: Path
    reads: list[int]

    def __post_init__(self) -> None:
        self._descriptor = os.open(self.path, os.O_RDONLY)

    @property
    def size(self) -> int:
        return os.fstat(self._descriptor).st_size

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append(length)
        return os.pread(self._descriptor, length, offset)

    def close(self) -> None:
        os.close(self._descriptor)


@dataclass
class NaiveDirectorySource:
    """root/path with no confinement at all: whatever the server hands over is opened."""

    root: Path
    asked: list[tuple[str, Requester]] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        self.asked.append((path, requester))
        candidate = self.root / path
        if not candidate.is_file():
            raise FileRefused(RefusalReason.NOT_FOUND, f"no {path}")
        return DiskFile(candidate, self.reads)


@dataclass
class RenderedSource:
    """Per-machine files rendered in memory, and paths whose refusal the test chooses."""

    refusals: dict[str, RefusalReason]
    asked: list[tuple[str, Requester]] = field(default_factory=list)

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        self.asked.append((path, requester))
        if path in self.refusals:
            raise FileRefused(self.refusals[path], "chosen by the test")
        if path == f"ipxe.cfg-{MAC}":
            script = f"#!ipxe\nkernel http://{requester.local_address}/images/vmlinuz\n"
            return MemoryFile(script.encode())
        raise FileRefused(RefusalReason.NOT_FOUND, f"no {path}")


@dataclass
class Rack:
    server: HttpBootServer
    root: Path
    outside: Path
    rendered: RenderedSource
    directory: NaiveDirectorySource

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}{path}"


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    bytes_downloaded: int


async def curl(*arguments: str, tmp_path: Path, output: str | None = None) -> Fetched:
    """Run curl; the status, headers (lower-cased names), body (unless ``output``) and byte count it got."""
    body_file, header_file = tmp_path / "curl.body", tmp_path / "curl.headers"
    body_file.unlink(missing_ok=True)
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        *(CURL, "-sS", "--path-as-is", "-w", "%{size_download}", "-D", str(header_file)),
        *("-o", output or str(body_file), *arguments),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), CURL_TIMEOUT_S)
    assert process.returncode == 0
    status_line, *header_lines = header_file.read_text("latin-1").strip().splitlines()
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = body_file.read_bytes() if body_file.exists() else b""
    return Fetched(int(status_line.split()[1]), headers, body, int(stdout))


def write_random_file(path: Path, size: int) -> bytes:
    content = os.urandom(size)
    path.write_bytes(content)
    return content


@pytest.fixture
async def rack(tmp_path: Path) -> AsyncIterator[Rack]:
    root, outside = tmp_path / "boot", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"not for machines\n")
    rendered = RenderedSource(
        refusals={"grub/grub.cfg-unavailable": RefusalReason.UNAVAILABLE, "forbidden": RefusalReason.ACCESS_VIOLATION}
    )
    directory = NaiveDirectorySource(root)
    server = await serve_http_boot("127.0.0.1", 0, FirstThatServes([rendered, directory]), retry_after_seconds=7)
    try:
        yield Rack(server, root, outside, rendered, directory)
    finally:
        await server.close()


async def test_a_big_file_arrives_byte_identical_with_its_exact_length(rack: Rack, tmp_path: Path) -> None:
    content = write_random_file(rack.root / "images" / "squashfs", BIG_SIZE)
    fetched = await curl(rack.url("/images/squashfs"), tmp_path=tmp_path)
    assert fetched.status == 200
    assert fetched.headers["content-length"] == str(BIG_SIZE)
    assert fetched.headers["accept-ranges"] == "bytes"
    assert hashlib.sha256(fetched.body).digest() == hashlib.sha256(content).digest()
    assert rack.server.counters.bytes_sent == BIG_SIZE


async def test_the_file_is_read_in_chunks_never_whole(rack: Rack, tmp_path: Path) -> None:
    write_random_file(rack.root / "images" / "squashfs", BIG_SIZE)
    await curl(rack.url("/images/squashfs"), tmp_path=tmp_path)
    assert max(rack.directory.reads) == CHUNK_SIZE
    assert sum(rack.directory.reads) == BIG_SIZE
    assert len(rack.directory.reads) == BIG_SIZE // CHUNK_SIZE


@pytest.mark.parametrize(
    ("curl_range", "first", "last"),
    [("100-199", 100, 199), ("-100", BIG_SIZE - 100, BIG_SIZE - 1), ("1000-", 1000, BIG_SIZE - 1), ("0-0", 0, 0)],
)
async def test_a_range_gets_exactly_its_bytes_with_206_and_content_range(
    rack: Rack, tmp_path: Path, curl_range: str, first: int, last: int
) -> None:
    content = write_random_file(rack.root / "images" / "vmlinuz", BIG_SIZE)
    fetched = await curl("-r", curl_range, rack.url("/images/vmlinuz"), tmp_path=tmp_path)
    assert fetched.status == 206
    assert fetched.headers["content-range"] == f"bytes {first}-{last}/{BIG_SIZE}"
    assert fetched.headers["content-length"] == str(last - first + 1)
    assert fetched.body == content[first : last + 1]


async def test_a_range_past_the_end_is_416_with_the_size(rack: Rack, tmp_path: Path) -> None:
    write_random_file(rack.root / "images" / "vmlinuz", 5000)
    fetched = await curl("-r", "5000-", rack.url("/images/vmlinuz"), tmp_path=tmp_path)
    assert fetched.status == 416
    assert fetched.headers["content-range"] == "bytes */5000"
    assert rack.server.counters.unsatisfiable_ranges == 1


async def test_several_ranges_get_the_whole_file(rack: Rack, tmp_path: Path) -> None:
    content = write_random_file(rack.root / "images" / "initrd.img", 5000)
    fetched = await curl("-r", "0-10,20-30", rack.url("/images/initrd.img"), tmp_path=tmp_path)
    assert (fetched.status, fetched.body) == (200, content)


async def test_head_announces_the_length_and_sends_no_body(rack: Rack, tmp_path: Path) -> None:
    write_random_file(rack.root / "lpxelinux.0", 75072)
    fetched = await curl("-I", rack.url("/lpxelinux.0"), tmp_path=tmp_path)
    assert fetched.status == 200
    assert fetched.headers["content-length"] == "75072"
    assert fetched.bytes_downloaded == 0
    assert rack.directory.reads == []


async def test_methods_other_than_get_and_head_are_405(rack: Rack, tmp_path: Path) -> None:
    write_random_file(rack.root / "lpxelinux.0", 100)
    fetched = await curl("-X", "POST", rack.url("/lpxelinux.0"), tmp_path=tmp_path)
    assert fetched.status == 405
    assert fetched.headers["allow"] == "GET, HEAD"
    assert rack.directory.asked == []


@pytest.mark.parametrize(
    "path",
    ["/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/images/%2E%2E/../outside/secret.txt", "/a%00b"],
)
async def test_traversal_is_refused_with_403_before_any_source_sees_it(rack: Rack, tmp_path: Path, path: str) -> None:
    fetched = await curl(rack.url(path), tmp_path=tmp_path)
    assert fetched.status == 403
    assert b"not for machines" not in fetched.body
    assert rack.rendered.asked == [] and rack.directory.asked == []
    assert rack.server.counters.refusals[RefusalReason.ACCESS_VIOLATION] == 1


async def test_a_url_naming_an_absolute_path_stays_inside_the_root(rack: Rack, tmp_path: Path) -> None:
    secret = rack.outside / "secret.txt"
    fetched = await curl(rack.url(f"/{secret}"), tmp_path=tmp_path)
    assert fetched.status == 404
    assert [path for path, _ in rack.directory.asked] == [str(secret).lstrip("/")]


async def test_an_ipxe_path_with_colons_reaches_the_source_unchanged(rack: Rack, tmp_path: Path) -> None:
    fetched = await curl(rack.url(f"/ipxe.cfg-{MAC}"), tmp_path=tmp_path)
    encoded = await curl(rack.url("/ipxe.cfg-52%3A54%3A00%3A12%3A34%3A56?arch=x86_64"), tmp_path=tmp_path)
    assert fetched.status == encoded.status == 200
    assert fetched.body == encoded.body == b"#!ipxe\nkernel http://127.0.0.1/images/vmlinuz\n"
    assert [path for path, _ in rack.rendered.asked] == [f"ipxe.cfg-{MAC}", f"ipxe.cfg-{MAC}"]
    requester = rack.rendered.asked[0][1]
    assert (requester.client_address, requester.local_address, requester.protocol) == ("127.0.0.1", "127.0.0.1", "http")
    assert requester.client_port > 0


@pytest.mark.parametrize(
    ("path", "status"),
    [("/grub/grub.cfg-unavailable", 503), ("/forbidden", 403), ("/images/no-such-kernel", 404)],
)
async def test_refusals_of_the_source_become_http_statuses(rack: Rack, tmp_path: Path, path: str, status: int) -> None:
    fetched = await curl(rack.url(path), tmp_path=tmp_path)
    assert fetched.status == status
    assert ("retry-after" in fetched.headers) == (status == 503)
    if status == 503:
        assert fetched.headers["retry-after"] == "7"


async def test_maas_paths_are_404_without_a_metadata_app_and_never_reach_the_source(rack: Rack, tmp_path: Path) -> None:
    (rack.root / "MAAS").mkdir()
    (rack.root / "MAAS" / "metadata").write_bytes(b"a file that must not be served")
    fetched = await curl(rack.url("/MAAS/metadata"), tmp_path=tmp_path)
    assert fetched.status == 404
    assert rack.rendered.asked == [] and rack.directory.asked == []


async def test_maas_paths_go_to_the_metadata_app_mounted_at_maas(tmp_path: Path) -> None:
    async def echo(request: Request) -> PlainTextResponse:
        body = await request.body()
        return PlainTextResponse(f"{request.method} {request.scope['root_path']} {request.url.path} {body.decode()}")

    metadata_app = Starlette(routes=[Route("/metadata/{rest:path}", echo, methods=["GET", "POST"])])
    source = NaiveDirectorySource(tmp_path)
    server = await serve_http_boot("127.0.0.1", 0, source, metadata_app=metadata_app)
    try:
        base = f"http://127.0.0.1:{server.port}"
        got = await curl(f"{base}/MAAS/metadata/latest/meta-data/instance-id", tmp_path=tmp_path)
        posted = await curl("-d", "op=signal", f"{base}/MAAS/metadata/2012-03-01/", tmp_path=tmp_path)
        outside_mount = await curl(f"{base}/MAASX/metadata/x", tmp_path=tmp_path)
    finally:
        await server.close()
    assert (got.status, got.body) == (200, b"GET /MAAS /MAAS/metadata/latest/meta-data/instance-id ")
    assert (posted.status, posted.body) == (200, b"POST /MAAS /MAAS/metadata/2012-03-01/ op=signal")
    assert outside_mount.status == 404
    assert [path for path, _ in source.asked] == ["MAASX/metadata/x"]


async def test_a_vanished_client_stops_the_reading(rack: Rack) -> None:
    (rack.root / "images" / "squashfs").touch()
    os.truncate(rack.root / "images" / "squashfs", SPARSE_SIZE)
    reader, writer = await asyncio.open_connection("127.0.0.1", rack.server.port)
    writer.write(b"GET /images/squashfs HTTP/1.1\r\nHost: rack\r\n\r\n")
    await reader.readexactly(1024 * 1024)
    writer.close()
    await writer.wait_closed()
    for _ in range(200):
        if rack.server.counters.aborted_transfers == 1:
            break
        await asyncio.sleep(0.05)
    assert rack.server.counters.aborted_transfers == 1
    read_when_aborted = sum(rack.directory.reads)
    await asyncio.sleep(0.3)
    assert sum(rack.directory.reads) == read_when_aborted < SPARSE_SIZE // 4


async def test_a_client_that_stops_reading_is_dropped_after_the_stall_timeout(tmp_path: Path) -> None:
    (tmp_path / "squashfs").touch()
    os.truncate(tmp_path / "squashfs", SPARSE_SIZE)
    source = NaiveDirectorySource(tmp_path)
    server = await serve_http_boot("127.0.0.1", 0, source, stall_timeout=0.5)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /squashfs HTTP/1.1\r\nHost: rack\r\n\r\n")
        for _ in range(300):
            if server.counters.stalled_transfers == 1:
                break
            await asyncio.sleep(0.05)
        assert server.counters.stalled_transfers == 1
        read_when_dropped = sum(source.reads)
        await asyncio.sleep(0.3)
        assert sum(source.reads) == read_when_dropped < SPARSE_SIZE // 4
        writer.close()
    finally:
        await server.close()


async def test_close_ends_within_its_timeout_even_with_a_stalled_client(tmp_path: Path) -> None:
    (tmp_path / "squashfs").touch()
    os.truncate(tmp_path / "squashfs", SPARSE_SIZE)
    server = await serve_http_boot("127.0.0.1", 0, NaiveDirectorySource(tmp_path), close_timeout=1)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /squashfs HTTP/1.1\r\nHost: rack\r\n\r\n")
    await reader.readexactly(1024)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(server.close(), 15)
    assert asyncio.get_running_loop().time() - started < 8
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)
    writer.close()


async def test_one_connection_serves_request_after_request(rack: Rack, tmp_path: Path) -> None:
    first = write_random_file(rack.root / "images" / "vmlinuz", 3 * CHUNK_SIZE + 17)
    second = write_random_file(rack.root / "images" / "initrd.img", 1000)
    assert CURL is not None
    process = await asyncio.create_subprocess_exec(
        *(CURL, "-sS", "-w", "%{http_code} %{num_connects}\n"),
        *("-o", str(tmp_path / "1"), rack.url("/images/vmlinuz")),
        *("-o", str(tmp_path / "2"), rack.url("/images/initrd.img")),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), CURL_TIMEOUT_S)
    assert stdout.decode().splitlines() == ["200 1", "200 0"]
    assert (tmp_path / "1").read_bytes() == first
    assert (tmp_path / "2").read_bytes() == second


async def test_concurrent_downloads_each_arrive_whole(rack: Rack, tmp_path: Path) -> None:
    content = write_random_file(rack.root / "images" / "squashfs", BIG_SIZE // 2)
    directories = [tmp_path / str(number) for number in range(4)]
    for directory in directories:
        directory.mkdir()
    fetches = await asyncio.gather(
        *(curl(rack.url("/images/squashfs"), tmp_path=directory) for directory in directories)
    )
    assert all(fetched.body == content for fetched in fetches)
    assert rack.server.counters.bytes_sent == 4 * len(content)


@dataclass
class IpxeScriptSource:
    """The iPXE script a rack would render: fetch a boot resource from this server, then print a marker."""

    port: int = 0
    asked: list[str] = field(default_factory=list)

    async def open(self, path: str, requester: Requester) -> OpenedFile:
        self.asked.append(path)
        if path != f"ipxe.cfg-{MAC}":
            raise FileRefused(RefusalReason.NOT_FOUND, f"no {path}")
        # 10.0.2.2 is the host as qemu's user network shows it to the guest.
        script = (
            f"#!ipxe\nimgfetch --name blob http://10.0.2.2:{self.port}/images/blob\nimgstat\necho BOOTED ${{mac}}\n"
        )
        return MemoryFile(script.encode())


async def read_until(stream: asyncio.StreamReader, marker: bytes) -> bytes:
    seen = b""
    while marker not in seen:
        line = await stream.readline()
        if not line:
            break
        seen += line
    return seen


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None or not IPXE_ROM.exists(), reason="qemu-system-x86 and ipxe-qemu are not installed")
async def test_ipxe_in_qemu_fetches_its_colon_named_script_and_a_boot_resource(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    blob = write_random_file(tmp_path / "images" / "blob", 3_000_000)
    scripts = IpxeScriptSource()
    server = await serve_http_boot("127.0.0.1", 0, FirstThatServes([scripts, NaiveDirectorySource(tmp_path)]))
    scripts.port = server.port
    assert QEMU is not None
    qemu = await asyncio.create_subprocess_exec(
        *(QEMU, "-nographic", "-m", "256", "-no-reboot", "-boot", "n"),
        *("-netdev", f"user,id=net0,bootfile=http://10.0.2.2:{server.port}/ipxe.cfg-${{mac}}"),
        *("-device", f"e1000,netdev=net0,mac={MAC},romfile={IPXE_ROM}"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert qemu.stdout is not None
    try:
        console = await asyncio.wait_for(read_until(qemu.stdout, f"BOOTED {MAC}".encode()), QEMU_TIMEOUT_S)
    finally:
        if qemu.returncode is None:
            qemu.kill()
        await qemu.wait()
        await server.close()
    assert f"BOOTED {MAC}".encode() in console, console.decode(errors="replace")[-2000:]
    assert f"blob : {len(blob)} bytes".encode() in console
    assert scripts.asked[0] == f"ipxe.cfg-{MAC}"
    assert server.counters.bytes_sent >= len(blob)


SERVER_PROCESS = textwrap.dedent(
    """
    import asyncio, os, sys
    from metalbus_rack_tftp.http_boot import serve_http_boot
    from metalbus_rack_tftp.sources import FileRefused, RefusalReason

    class DiskFile:
        def __init__(self, path):
            self._descriptor = os.open(path, os.O_RDONLY)
            self.size = os.fstat(self._descriptor).st_size
        def read(self, offset, length):
            return os.pread(self._descriptor, length, offset)
        def close(self):
            os.close(self._descriptor)

    class Directory:
        async def open(self, path, requester):
            return DiskFile(os.path.join(sys.argv[1], path))

    async def main():
        server = await serve_http_boot("127.0.0.1", 0, Directory())
        print(server.port, file=sys.stderr, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.close()

    asyncio.run(main())
    """
)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
async def test_streaming_a_200_mib_file_keeps_the_server_memory_flat(tmp_path: Path) -> None:
    sparse = tmp_path / "squashfs"
    sparse.touch()
    os.truncate(sparse, SPARSE_SIZE)
    (tmp_path / "small").write_bytes(b"x" * 1000)
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVER_PROCESS,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert server.stdin is not None and server.stderr is not None
    try:
        port = int(await asyncio.wait_for(server.stderr.readline(), 30))
        warm = await curl(f"http://127.0.0.1:{port}/small", tmp_path=tmp_path)
        assert warm.status == 200
        before = peak_rss_kib(server.pid)
        fetched = await curl(f"http://127.0.0.1:{port}/squashfs", tmp_path=tmp_path, output="/dev/null")
        after = peak_rss_kib(server.pid)
    finally:
        server.stdin.close()
        try:
            await asyncio.wait_for(server.wait(), 15)
        except TimeoutError:
            server.kill()
            await server.wait()
    assert fetched.status == 200
    assert fetched.headers["content-length"] == str(SPARSE_SIZE)
    assert fetched.bytes_downloaded == SPARSE_SIZE
    assert after - before < 32 * 1024, f"peak RSS grew by {after - before} KiB while streaming {SPARSE_SIZE} bytes"


async def test_the_server_leaves_signal_handling_to_the_service(tmp_path: Path) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = await serve_http_boot("127.0.0.1", 0, NaiveDirectorySource(tmp_path))
    try:
        during = {sig: signal.getsignal(sig) for sig in before}
    finally:
        await server.close()
    assert during == before


async def test_a_taken_port_is_an_os_error_at_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            await serve_http_boot("127.0.0.1", taken.getsockname()[1], NaiveDirectorySource(tmp_path))
