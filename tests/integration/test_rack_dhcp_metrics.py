"""rack-dhcp run as a service exposes its DHCP traffic on GET /metrics and logs each lease as one structured line.

The service (``run_rack_dhcp``) runs in-process with a region, answering a real busybox udhcpc in a network
namespace made for the test (the link fixtures of ``test_rack_dhcp_clients``); the test scrapes the service's
metrics port over loopback and parses the text with prometheus_client's own parser.
"""

import asyncio
import os
import shutil
import socket
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from metalbus.bus import Bus
from metalbus_rack_dhcp.__main__ import run_rack_dhcp
from metalbus_rack_dhcp.settings import RackDhcpSettings
from tests.conftest import NatsServer
from tests.integration.test_rack_dhcp_clients import (
    Link,
    client_script,  # noqa: F401 — a fixture, used by name
    link,  # noqa: F401 — a fixture, used by name
    serve_subnet,
    udhcpc_once,
)
from tests.integration.test_region import eventually, running_region

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and port 67 need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed"),
    pytest.mark.skipif(shutil.which("udhcpc") is None, reason="udhcpc is not installed (scripts/setup.sh does)"),
]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def scrape(port: int) -> Samples | None:
    """Every sample of http://127.0.0.1:<port>/metrics, or None while nothing listens there."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    except httpx.TransportError:
        return None
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def region_observations(samples: Samples | None, operation: str) -> float:
    if samples is None:
        return 0
    return value(samples, "metalbus_rack_dhcp_region_request_seconds_count", operation=operation) or 0


def lease_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "dhcp.lease"]


async def test_a_udhcpc_lease_shows_on_metrics_as_counted_dora_and_timed_region_requests_and_is_logged(
    nats_server: NatsServer,
    database_dsn: str,
    bus: Bus,
    link: Link,  # noqa: F811 — the imported fixture
    client_script: Path,  # noqa: F811
) -> None:
    port = free_tcp_port()
    settings = RackDhcpSettings(
        nats_url=nats_server.url,
        rack_id="rack-metered",
        serve_interfaces=[link.server_interface],
        interfaces=[],
        heartbeat_interval_s=0.2,
        metrics_port=port,
    )
    async with running_region(nats_server, database_dsn, "r1"):
        await serve_subnet(bus, link, 600)
        stop = asyncio.Event()
        with capture_logs() as logs:
            service = asyncio.create_task(run_rack_dhcp(settings, stop))
            try:
                await eventually(lambda: scrape(port), lambda samples: region_observations(samples, "snapshot") >= 1)
                status, output = await udhcpc_once(link, client_script)
                samples = await scrape(port)
            finally:
                stop.set()
                await asyncio.wait_for(service, 10)

    assert status == 0, output
    assert samples is not None
    address = link.record("bound")["ip"]
    discovers = value(samples, "metalbus_rack_dhcp_received_total", type="DISCOVER")
    requests = value(samples, "metalbus_rack_dhcp_received_total", type="REQUEST")
    assert discovers is not None and discovers >= 1
    assert requests is not None and requests >= 1
    assert value(samples, "metalbus_rack_dhcp_replied_total", type="OFFER") == discovers  # one OFFER per DISCOVER
    assert value(samples, "metalbus_rack_dhcp_replied_total", type="ACK") == requests
    assert region_observations(samples, "offer") == discovers  # every DISCOVER asked the region once
    assert region_observations(samples, "commit") == requests
    infinite = value(samples, "metalbus_rack_dhcp_region_request_seconds_bucket", operation="commit", le="+Inf")
    assert infinite == requests
    dropped = {labels: count for (name, labels), count in samples.items() if name == "metalbus_rack_dhcp_dropped_total"}
    assert dropped and set(dropped.values()) == {0}

    acks = [line for line in lease_lines(logs) if line["type"] == "ACK"]
    assert acks, lease_lines(logs)
    expected = {
        "mac": link.client_mac,
        "ip": address,
        "subnet": f"{link.prefix}.0/24",
        "rack": "rack-metered",
        "source": "region",
        "interface": link.server_interface,
        "log_level": "info",
    }
    assert {key: acks[-1][key] for key in expected} == expected
    assert await scrape(port) is None  # the endpoint stopped with the service
