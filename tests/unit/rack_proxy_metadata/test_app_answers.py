"""What the metadata app answers before and after asking the region: upload limits, 401/403/503, counters.

The app is driven through rack-tftp's HTTP boot app (mounted at /MAAS exactly as the rack serves it) by httpx's
ASGI transport; the region is a recording stand-in (the real region, NATS and clients are in
tests/integration/test_rack_proxy_metadata.py).
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from metalbus.contracts.errors import Forbidden, MetalbusError, Timeout, Unavailable
from metalbus.contracts.machines import MachineStatus
from metalbus.contracts.metadata import (
    MetadataRead,
    MetadataSignal,
    MetadataStatusReport,
    MetadataValue,
    SignalAck,
    StatusReportAck,
)
from metalbus_rack_proxy.metadata_app import MetadataApp
from metalbus_rack_tftp.http_boot import HttpBootApp
from metalbus_rack_tftp.sources import FileRefused, OpenedFile, RefusalReason, Requester

LIMIT = 8000
AUTH = {"Authorization": 'OAuth oauth_consumer_key="ck1", oauth_token="tk1", oauth_signature="%26ts1"'}
SIGNAL_URL = "http://rack/MAAS/metadata/2012-03-01/"


@dataclass
class RecordingRegion:
    """Answers for machine ``x7kq2m``, or raises ``failure``; keeps what it was asked."""

    failure: MetalbusError | None = None
    reads: list[MetadataRead] = field(default_factory=list)
    signals: list[MetadataSignal] = field(default_factory=list)
    reports: list[MetadataStatusReport] = field(default_factory=list)

    async def read(self, request: MetadataRead) -> MetadataValue:
        self.reads.append(request)
        if self.failure is not None:
            raise self.failure
        return MetadataValue(system_id="x7kq2m", item=request.item, content="x7kq2m")

    async def signal(self, signal: MetadataSignal) -> SignalAck:
        self.signals.append(signal)
        if self.failure is not None:
            raise self.failure
        return SignalAck(system_id="x7kq2m", status=MachineStatus.COMMISSIONING)

    async def status_report(self, report: MetadataStatusReport) -> StatusReportAck:
        self.reports.append(report)
        return StatusReportAck(system_id=report.system_id)


class NoFiles:
    async def open(self, path: str, requester: Requester) -> OpenedFile:
        raise FileRefused(RefusalReason.NOT_FOUND, path)


@dataclass
class Rack:
    app: MetadataApp
    region: RecordingRegion
    client: httpx.AsyncClient


@pytest.fixture
async def rack() -> AsyncIterator[Rack]:
    region = RecordingRegion()
    app = MetadataApp(region, max_upload_bytes=LIMIT, retry_after_seconds=9)
    transport = httpx.ASGITransport(app=HttpBootApp(NoFiles(), metadata_app=app))
    async with httpx.AsyncClient(transport=transport) as client:
        yield Rack(app, region, client)


def form(padding: int) -> dict[str, str]:
    return {"op": "signal", "status": "WORKING", "error": "e" * padding}


async def chunks(total: int) -> AsyncIterator[bytes]:
    """A body sent chunked (no Content-Length): the limit must hold while it streams."""
    sent = 0
    while sent < total:
        piece = min(100, total - sent)
        sent += piece
        yield b"e" * piece


async def test_a_body_declared_over_the_limit_gets_413_without_asking_the_region(rack: Rack) -> None:
    reply = await rack.client.post(SIGNAL_URL, data=form(LIMIT), headers=AUTH)
    assert reply.status_code == 413
    assert rack.region.signals == []
    assert rack.app.counters.uploads_refused == 1


async def test_a_chunked_body_that_grows_over_the_limit_gets_413(rack: Rack) -> None:
    headers = AUTH | {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await rack.client.post(SIGNAL_URL, content=chunks(LIMIT + 1), headers=headers)
    assert reply.status_code == 413
    assert rack.region.signals == []


async def test_a_body_at_the_limit_is_forwarded(rack: Rack) -> None:
    body = "op=signal&status=WORKING&error="
    body += "e" * (LIMIT - len(body))
    headers = AUTH | {"Content-Type": "application/x-www-form-urlencoded"}
    reply = await rack.client.post(SIGNAL_URL, content=body.encode(), headers=headers)
    assert reply.status_code == 200
    assert [signal.error for signal in rack.region.signals] == ["e" * (LIMIT - 31)]


async def test_a_status_event_over_its_limit_gets_413(rack: Rack) -> None:
    reply = await rack.client.post("http://rack/MAAS/metadata/status/x7kq2m", content=b"{" * (LIMIT + 1), headers=AUTH)
    assert reply.status_code == 413


async def test_without_credentials_the_answer_is_401_and_the_region_is_not_asked(rack: Rack) -> None:
    reply = await rack.client.get("http://rack/MAAS/metadata/latest/meta-data/instance-id")
    posted = await rack.client.post(SIGNAL_URL, data=form(0))
    assert (reply.status_code, posted.status_code) == (401, 401)
    assert reply.headers["www-authenticate"] == 'OAuth realm="OAuth"'
    assert (rack.region.reads, rack.region.signals) == ([], [])
    assert rack.app.counters.unauthenticated == 2


@pytest.mark.parametrize(
    ("failure", "status"),
    [(Forbidden("metadata credentials are not valid"), 401), (Unavailable("no region"), 503), (Timeout("slow"), 503)],
)
async def test_region_refusals_become_their_http_answer(rack: Rack, failure: MetalbusError, status: int) -> None:
    rack.region.failure = failure
    reply = await rack.client.get("http://rack/MAAS/metadata/latest/meta-data/local-hostname", headers=AUTH)
    assert reply.status_code == status
    if status == 503:
        assert reply.headers["retry-after"] == "9"
    assert rack.app.counters.region_failures_by_code[failure.code.value] == 1


async def test_the_status_of_another_machine_is_403(rack: Rack) -> None:
    other = await rack.client.post("http://rack/MAAS/metadata/status/zzzzzz", json={"name": "x"}, headers=AUTH)
    own = await rack.client.post("http://rack/MAAS/metadata/status/x7kq2m", json={"name": "x"}, headers=AUTH)
    assert (other.status_code, own.status_code) == (403, 200)
    assert [report.system_id for report in rack.region.reports] == ["x7kq2m"]


async def test_status_events_are_cut_to_the_models_bounds_rather_than_refused(rack: Rack) -> None:
    event = {"event_type": "finish" * 20, "name": "n" * 300, "description": "d" * 3000, "result": 7, "timestamp": -5}
    reply = await rack.client.post("http://rack/MAAS/metadata/status/x7kq2m", json=event, headers=AUTH)
    assert reply.status_code == 200
    [report] = rack.region.reports
    assert (len(report.event_type), len(report.name), len(report.description)) == (40, 255, 2000)
    assert (report.result, report.timestamp, report.origin) == ("7", None, "")


async def test_every_request_is_counted_by_route_and_status_with_its_latency(rack: Rack) -> None:
    for item in ("instance-id", "local-hostname", "no-such-item"):
        await rack.client.get(f"http://rack/MAAS/metadata/latest/meta-data/{item}", headers=AUTH)
    await rack.client.get("http://rack/MAAS/metadata/")
    counters = rack.app.counters
    assert counters.requests_by_route == {"meta-data/{item}": 3, "versions": 1}
    assert counters.responses_by_status == {200: 3, 404: 1}
    assert counters.latency.total == 4
    assert 0 < counters.latency.quantile_upper_bound(0.99) < float("inf")
