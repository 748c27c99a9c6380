"""rack-proxy's APT proxy with real clients (curl -x, apt-get) against a local upstream serving a Debian repository.

The upstream is an aiohttp server started by the test that counts the requests it receives per path: a cache hit
is a response the client got while that count did not move.
"""

import asyncio
import gzip
import hashlib
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from metalbus_rack_proxy.apt_proxy import AptProxy, AptProxyConfig
from tests.conftest import free_port
from tests.integration.test_region import eventually

PACKAGE = "metalbus-hello"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEB_PATH = f"pool/main/m/{PACKAGE}/{PACKAGE}_1.0_all.deb"


def build_repository(root: Path) -> None:
    """A one-package Debian repository: pool/…/.deb, dists/stable/main/binary-amd64/Packages(.gz), Release."""
    source = root.parent / "package-source"
    (source / "DEBIAN").mkdir(parents=True)
    (source / "usr/share/doc" / PACKAGE).mkdir(parents=True)
    (source / "usr/share/doc" / PACKAGE / "README").write_text("hello from the local repository\n" * 200)
    (source / "DEBIAN/control").write_text(
        f"Package: {PACKAGE}\nVersion: 1.0\nArchitecture: all\nMaintainer: metalbus <dev@example.org>\n"
        "Description: test package served through the rack's APT proxy\n"
    )
    deb = root / DEB_PATH
    deb.parent.mkdir(parents=True)
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(source), str(deb)], check=True, capture_output=True
    )
    packages = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "pool"], cwd=root, check=True, capture_output=True
    ).stdout
    binary = root / "dists/stable/main/binary-amd64"
    binary.mkdir(parents=True)
    (binary / "Packages").write_bytes(packages)
    (binary / "Packages.gz").write_bytes(gzip.compress(packages))
    write_release(root / "dists/stable")


def write_release(dist: Path) -> None:
    files = sorted(path for path in dist.rglob("*") if path.is_file())
    lines = [
        "Origin: metalbus-test", "Suite: stable", "Codename: stable", "Architectures: amd64", "Components: main",
        "Date: Wed, 25 Nov 2026 09:00:00 UTC", "SHA256:",
    ]  # fmt: skip
    for path in files:
        data = path.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {path.relative_to(dist)}")
    (dist / "Release").write_text("\n".join(lines) + "\n")


@dataclass
class Upstream:
    root: Path
    port: int
    requests: Counter[str]
    runner: web.AppRunner

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/debian/{path}"


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    root = tmp_path / "repository"
    build_repository(root)
    requests: Counter[str] = Counter()

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        requests[request.path] += 1
        await asyncio.sleep(0.05)  # a slow mirror, so that concurrent clients overlap
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_static("/debian/", root)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Upstream(root, port, requests, runner)
    finally:
        await runner.cleanup()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[AptProxy]:
    async with running_proxy(AptProxyConfig(cache_dir=tmp_path / "cache", host="127.0.0.1", port=free_port())) as p:
        yield p


@asynccontextmanager
async def running_proxy(config: AptProxyConfig, clock: Callable[[], float] = time.monotonic) -> AsyncIterator[AptProxy]:
    proxy, stop = AptProxy(config, clock=clock), asyncio.Event()
    task = asyncio.create_task(proxy.run(stop))
    try:
        await eventually(lambda: port_open(config.port), bool, timeout=5)
        yield proxy
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def run(*argv: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, bytes, bytes]:
    process = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=timeout)
    assert process.returncode is not None
    return process.returncode, out, err


async def curl_via(proxy: AptProxy, url: str) -> tuple[str, bytes]:
    code, body, err = await run(
        "curl", "-sS", "--fail", "-D", "-", "-o", "/dev/stdout", "-x", f"http://127.0.0.1:{proxy.config.port}", url
    )
    assert code == 0, err
    head, _, payload = body.partition(b"\r\n\r\n")
    return head.decode(), payload


async def test_second_fetch_of_a_package_is_served_from_the_cache(upstream: Upstream, proxy: AptProxy) -> None:
    expected = (upstream.root / DEB_PATH).read_bytes()
    _, first = await curl_via(proxy, upstream.url(DEB_PATH))
    _, second = await curl_via(proxy, upstream.url(DEB_PATH))
    assert first == second == expected
    assert upstream.requests[f"/debian/{DEB_PATH}"] == 1
    assert (proxy.counters.hits, proxy.counters.misses) == (1, 1)


async def test_twenty_concurrent_fetches_of_one_file_reach_upstream_once(upstream: Upstream, proxy: AptProxy) -> None:
    expected = (upstream.root / DEB_PATH).read_bytes()
    results = await asyncio.gather(*(curl_via(proxy, upstream.url(DEB_PATH)) for _ in range(20)))
    assert all(payload == expected for _, payload in results)
    assert upstream.requests[f"/debian/{DEB_PATH}"] == 1


async def test_index_files_are_revalidated_after_their_ttl_and_debs_are_not(upstream: Upstream, tmp_path: Path) -> None:
    config = AptProxyConfig(cache_dir=tmp_path / "cache", host="127.0.0.1", port=free_port(), index_ttl_s=60)
    release = "dists/stable/Release"
    now = [1000.0]  # the proxy's clock: time passes only when the test says so
    async with running_proxy(config, clock=lambda: now[0]) as proxy:
        for _ in range(2):
            await curl_via(proxy, upstream.url(release))
            await curl_via(proxy, upstream.url(DEB_PATH))
        assert upstream.requests[f"/debian/{release}"] == 1, "fresh within the TTL"
        now[0] += 61
        _, payload = await curl_via(proxy, upstream.url(release))
        await curl_via(proxy, upstream.url(DEB_PATH))
    assert payload == (upstream.root / release).read_bytes()
    assert upstream.requests[f"/debian/{release}"] == 2, "revalidated after the TTL"
    assert proxy.counters.revalidated == 1, "answered 304 Not Modified: the cached copy was kept"
    assert upstream.requests[f"/debian/{DEB_PATH}"] == 1, "a .deb is never asked for again"


async def test_cache_stays_under_its_bound_by_evicting_least_recently_used(upstream: Upstream, tmp_path: Path) -> None:
    for number in range(6):
        (upstream.root / f"pool/blob-{number}.deb").write_bytes(bytes([number]) * 40_000)
    cache_dir = tmp_path / "cache"
    config = AptProxyConfig(cache_dir=cache_dir, host="127.0.0.1", port=free_port(), cache_max_bytes=100_000)
    async with running_proxy(config) as proxy:
        for number in range(6):
            _, payload = await curl_via(proxy, upstream.url(f"pool/blob-{number}.deb"))
            assert payload == bytes([number]) * 40_000
            assert sum(path.stat().st_size for path in cache_dir.iterdir()) <= 100_000
        await curl_via(proxy, upstream.url("pool/blob-5.deb"))
        await curl_via(proxy, upstream.url("pool/blob-0.deb"))
    assert upstream.requests["/debian/pool/blob-5.deb"] == 1, "the newest stayed"
    assert upstream.requests["/debian/pool/blob-0.deb"] == 2, "the oldest was evicted"
    assert proxy.counters.evictions == 5, "blobs 0-3 to make room, then blob 4 for blob 0 again"


async def test_upstream_errors_are_relayed_and_not_cached(upstream: Upstream, proxy: AptProxy) -> None:
    url = upstream.url("pool/missing.deb")
    for _ in range(2):
        code, out, _ = await run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-x",
                                 f"http://127.0.0.1:{proxy.config.port}", url)  # fmt: skip
        assert (code, out) == (0, b"404")
    assert upstream.requests["/debian/pool/missing.deb"] == 2


async def test_apt_get_update_and_download_through_the_proxy(
    upstream: Upstream, proxy: AptProxy, tmp_path: Path
) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text(f"deb [trusted=yes] http://127.0.0.1:{upstream.port}/debian stable main\n")
    state, cache, downloads = tmp_path / "apt-state", tmp_path / "apt-cache", tmp_path / "downloads"
    for directory in (state / "lists/partial", cache / "archives/partial", downloads):
        directory.mkdir(parents=True)
    options = [
        "-o", f"Acquire::http::Proxy=http://127.0.0.1:{proxy.config.port}",
        "-o", f"Dir::Etc::sourcelist={sources}", "-o", "Dir::Etc::sourceparts=/nonexistent",
        "-o", f"Dir::State={state}", "-o", f"Dir::Cache={cache}", "-o", "Dir::State::status=/dev/null",
        "-o", "APT::Sandbox::User=root", "-o", "Acquire::Languages=none", "-o", "APT::Architectures=amd64",
        "-o", "Debug::NoLocking=1",
    ]  # fmt: skip
    code, out, err = await run("apt-get", *options, "update")
    assert code == 0, (out, err)
    assert upstream.requests["/debian/dists/stable/Release"] >= 1
    code, out, err = await run("apt-get", *options, "download", PACKAGE, cwd=downloads)
    assert code == 0, (out, err)
    [fetched] = downloads.glob("*.deb")
    assert fetched.read_bytes() == (upstream.root / DEB_PATH).read_bytes()
    code, out, err = await run("apt-get", *options, "download", PACKAGE, cwd=tmp_path)
    assert code == 0, (out, err)
    assert upstream.requests[f"/debian/{DEB_PATH}"] == 1, "the second download was a cache hit"
    assert proxy.counters.upstream_requests == sum(upstream.requests.values()), "apt went through the proxy"


async def test_a_stale_index_is_served_when_upstream_is_unreachable(upstream: Upstream, tmp_path: Path) -> None:
    config = AptProxyConfig(cache_dir=tmp_path / "cache", host="127.0.0.1", port=free_port(), index_ttl_s=0.1)
    release = "dists/stable/Release"
    async with running_proxy(config) as proxy:
        await curl_via(proxy, upstream.url(release))
        await upstream.runner.cleanup()  # listener and open connections closed
        await asyncio.sleep(0.2)
        _, payload = await curl_via(proxy, upstream.url(release))
    assert payload == (upstream.root / release).read_bytes()
    assert (proxy.counters.stale_served, proxy.counters.upstream_requests) == (1, 2)
