"""rack-tftp and rack-proxy as their ``__main__`` runs them: every part listening, metadata mounted on the rack's
HTTP server, counters on the metrics endpoint — against a real region, NATS and PostgreSQL."""

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metalbus_rack_proxy.__main__ import run_rack_proxy
from metalbus_rack_proxy.settings import RackProxySettings
from metalbus_rack_tftp.__main__ import run_rack_tftp
from metalbus_rack_tftp.settings import RackTftpSettings
from tests.conftest import NatsServer, free_port
from tests.integration.test_region import eventually, running_region

BOOT_FILES = Path(__file__).resolve().parents[2] / "scripts" / "boot-files.sh"


def scrape(port: int) -> dict[str, float]:
    """Every sample of the endpoint by name and labels, e.g. ``metalbus_rack_tftp_requests_total``; empty while the
    endpoint is not listening yet."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return {}
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{key}={value}" for key, value in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


@contextlib.asynccontextmanager
async def running(service: Coroutine[Any, Any, None], stop: asyncio.Event) -> AsyncIterator[None]:
    task = asyncio.create_task(service)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


async def test_rack_tftp_serves_tftp_http_and_metadata_and_counts_them(
    nats_server: NatsServer, database_dsn: str, tmp_path: Path
) -> None:
    boot_root = tmp_path / "boot"
    await asyncio.to_thread(
        subprocess.run, ["bash", str(BOOT_FILES), str(boot_root)], check=True, capture_output=True, timeout=120
    )
    settings = RackTftpSettings(
        nats_url=nats_server.url,
        rack_id="rack-1",
        listen_address="127.0.0.1",
        port=free_port(),
        http_port=free_port(),
        metrics_port=free_port(),
        boot_root=boot_root,
    )
    stop = asyncio.Event()
    async with running_region(nats_server, database_dsn, "r1"), running(run_rack_tftp(settings, stop), stop):
        await eventually(lambda: asyncio.to_thread(scrape, settings.metrics_port), bool)
        tftp = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "20", f"tftp://127.0.0.1:{settings.port}/lpxelinux.0",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        fetched, _ = await tftp.communicate()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=10) as http:
            over_http = (await http.get("/lpxelinux.0")).content
            versions = await http.get("/MAAS/metadata/")
            unauthenticated = await http.get("/MAAS/metadata/latest/meta-data/instance-id")
        metrics = await asyncio.to_thread(scrape, settings.metrics_port)

    debian = await asyncio.to_thread(Path("/usr/lib/PXELINUX/lpxelinux.0").read_bytes)
    assert fetched == over_http == debian
    assert versions.status_code == 200 and "2012-03-01" in versions.text
    assert unauthenticated.status_code == 401
    assert metrics["metalbus_rack_tftp_transfers_completed_total"] == 1
    assert metrics["metalbus_rack_tftp_http_boot_requests_total"] >= 1
    assert metrics["metalbus_rack_tftp_http_boot_metadata_requests_total"] == 2
    assert metrics["metalbus_rack_tftp_metadata_unauthenticated_total"] == 1


@pytest.mark.skipif(shutil.which("dig") is None or shutil.which("logger") is None, reason="dig and logger needed")
async def test_rack_proxy_runs_dns_syslog_and_the_apt_proxy_and_counts_them(
    nats_server: NatsServer, database_dsn: str, tmp_path: Path
) -> None:
    settings = RackProxySettings(
        nats_url=nats_server.url,
        rack_id="rack-1",
        listen_address="127.0.0.1",
        dns_port=free_port(),
        syslog_ports=[free_port()],
        apt_proxy_port=free_port(),
        apt_cache_dir=tmp_path / "apt-cache",
        metrics_port=free_port(),
    )
    stop = asyncio.Event()
    async with running_region(nats_server, database_dsn, "r1"), running(run_rack_proxy(settings, stop), stop):
        await eventually(lambda: asyncio.to_thread(scrape, settings.metrics_port), bool)
        soa = await eventually(
            lambda: asyncio.to_thread(
                subprocess.run,
                ["dig", "@127.0.0.1", "-p", str(settings.dns_port), "+short", "SOA", "maas-internal"],
                capture_output=True,
                text=True,
                timeout=10,
            ),
            lambda result: result.stdout.strip() != "",
        )
        await asyncio.to_thread(
            subprocess.run,
            ["logger", "--server", "127.0.0.1", "--port", str(settings.syslog_ports[0]), "--udp", "hello rack"],
            check=True,
            timeout=10,
        )
        metrics = await eventually(
            lambda: asyncio.to_thread(scrape, settings.metrics_port),
            lambda found: found.get("metalbus_rack_proxy_syslog_received_total") == 1,
        )
        async with httpx.AsyncClient(proxy=f"http://127.0.0.1:{settings.apt_proxy_port}", timeout=10) as client:
            unreachable = await client.get(f"http://127.0.0.1:{free_port()}/debian/dists/stable/Release")
        metrics = await asyncio.to_thread(scrape, settings.metrics_port)

    assert "maas-internal" in soa.stdout
    assert metrics["metalbus_rack_proxy_syslog_received_total"] == 1
    assert unreachable.status_code >= 500  # the proxy answered for an upstream that is not there
    assert metrics["metalbus_rack_proxy_apt_requests_total"] == 1
    assert any(name.startswith("metalbus_rack_proxy_dns_") for name in metrics)
