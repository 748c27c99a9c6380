"""rack-dhcp's Prometheus metrics and lease log lines move exactly as datagrams are handled; /metrics serves them."""

import asyncio
from collections.abc import Iterator, MutableMapping
from ipaddress import IPv4Address
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from metalbus.contracts.errors import NotFound, Unavailable
from metalbus.contracts.leases import RackSnapshot
from metalbus.metrics_endpoint import MetricsEndpoint, serving_metrics
from metalbus_rack_dhcp.codec import decode_message, encode_message
from metalbus_rack_dhcp.lease_cache import CachedLeaseSource
from metalbus_rack_dhcp.messages import BOOTREPLY, BOOTREQUEST, UNSPECIFIED, DhcpMessage, MessageType, Option
from metalbus_rack_dhcp.metrics import RackDhcpMetrics
from metalbus_rack_dhcp.server import DhcpProtocol, ServerCounters, lease_fields
from tests.unit.rack_dhcp.test_lease_cache import BOUND, IP, MAC, SUBNET, Clock, FakeRegion
from tests.unit.rack_dhcp.test_server import RACK, FakeLeaseSource, FakeTransport, settle

CHADDR = bytes.fromhex(MAC.replace(":", "")) + bytes(10)
XID = 0x2A2A2A2A


def datagram(kind: MessageType, *options: tuple[int, bytes], ciaddr: IPv4Address = UNSPECIFIED) -> bytes:
    message = DhcpMessage(
        op=BOOTREQUEST, xid=XID, chaddr=CHADDR, ciaddr=ciaddr, options=((Option.MESSAGE_TYPE, bytes([kind])), *options)
    )
    return encode_message(message)


SERVER_ID = (Option.SERVER_ID, RACK.link_address.packed)
REQUESTED = (Option.REQUESTED_IP, IP.packed)
DISCOVER = datagram(MessageType.DISCOVER)
SELECTING = datagram(MessageType.REQUEST, SERVER_ID, REQUESTED)
RENEWING = datagram(MessageType.REQUEST, ciaddr=IP)
RELEASE = datagram(MessageType.RELEASE, SERVER_ID, ciaddr=IP)
DECLINE = datagram(MessageType.DECLINE, SERVER_ID, REQUESTED)
INFORM = datagram(MessageType.INFORM, ciaddr=IP)
TRUNCATED = DISCOVER[:243] + b"\x0c\x10abc"  # option 12 claims 16 bytes, 3 follow
OVERSIZED = DISCOVER[:243] + (b"\x0c\xc8" + b"a" * 200) * 10  # 2 KiB of options and no end option


class SteppingClock:
    """Every reading is ``step`` seconds after the previous one: each timed region request lasts ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def always_ok(interface: str, address: IPv4Address, mac: bytes) -> bool:
    return True


class Rack:
    """A protocol on a fake transport, its leases from ``region`` through the cache, both timed into ``metrics``."""

    def __init__(self, region: FakeRegion, *, step: float = 0.02) -> None:
        self.region = region
        self.metrics = RackDhcpMetrics(ServerCounters(), clock=SteppingClock(step))
        timing = self.metrics.region
        self.cache = CachedLeaseSource(timing.timed_source(region), timing.timed_fetcher(self._snapshot), clock=Clock())
        self.metrics.watch_cache(self.cache)
        self.protocol = DhcpProtocol(
            "eth0", RACK, self.cache, counters=self.metrics.counters, neighbour_setter=always_ok
        )
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    async def _snapshot(self) -> RackSnapshot:
        if self.region.away is not None:
            raise self.region.away
        return RackSnapshot(rack_id="rack-1", subnets=[SUBNET], leases=[BOUND], reserved={})

    async def receive(self, *datagrams: bytes) -> None:
        """Each datagram handled to its end before the next arrives."""
        for data in datagrams:
            self.protocol.datagram_received(data, ("0.0.0.0", 68))
            await settle(self.protocol)

    def value(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def rack() -> Rack:
    return Rack(FakeRegion())


def lease_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "dhcp.lease"]


async def test_requests_and_replies_are_counted_by_message_type(rack: Rack) -> None:
    await rack.receive(DISCOVER, SELECTING, RELEASE)

    assert rack.value("metalbus_rack_dhcp_received_total", type="DISCOVER") == 1
    assert rack.value("metalbus_rack_dhcp_received_total", type="REQUEST") == 1
    assert rack.value("metalbus_rack_dhcp_received_total", type="RELEASE") == 1
    assert rack.value("metalbus_rack_dhcp_received_total", type="DECLINE") == 0
    assert rack.value("metalbus_rack_dhcp_replied_total", type="OFFER") == 1
    assert rack.value("metalbus_rack_dhcp_replied_total", type="ACK") == 1
    assert rack.value("metalbus_rack_dhcp_replied_total", type="NAK") == 0
    assert rack.value("metalbus_rack_dhcp_silent_total", reason="no_reply_expected") == 1
    assert len(rack.transport.sent) == 2


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"", "decode_truncated_header", id="empty"),
        pytest.param(b"\x01" * 20, "decode_truncated_header", id="shorter-than-a-header"),
        pytest.param(TRUNCATED, "decode_option_overruns_packet", id="truncated-option"),
        pytest.param(OVERSIZED, "decode_no_end_option", id="oversized"),
        pytest.param(DISCOVER[:236] + bytes(4) + DISCOVER[240:], "decode_bad_magic_cookie", id="bad-cookie"),
    ],
)
async def test_an_undecodable_datagram_is_dropped_under_the_codecs_reason(rack: Rack, data: bytes, reason: str) -> None:
    await rack.receive(data, data)

    assert rack.value("metalbus_rack_dhcp_dropped_total", reason=reason) == 2
    others = [
        sample
        for family in rack.metrics.registry.collect()
        if family.name == "metalbus_rack_dhcp_dropped"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["reason"] != reason
    ]
    assert others and all(sample.value == 0 for sample in others)
    assert rack.value("metalbus_rack_dhcp_received_total", type="DISCOVER") == 0
    assert rack.transport.sent == []


async def test_datagrams_over_max_in_flight_are_dropped_as_overloaded() -> None:
    gate = asyncio.Event()
    metrics = RackDhcpMetrics(ServerCounters())
    protocol = DhcpProtocol(
        "eth0", RACK, FakeLeaseSource(gate=gate), counters=metrics.counters, max_in_flight=2, neighbour_setter=always_ok
    )
    protocol.connection_made(FakeTransport())  # type: ignore[arg-type]

    for _ in range(3):
        protocol.datagram_received(DISCOVER, ("0.0.0.0", 68))
    gate.set()
    await settle(protocol)

    assert metrics.registry.get_sample_value("metalbus_rack_dhcp_dropped_total", {"reason": "overloaded"}) == 1
    assert metrics.registry.get_sample_value("metalbus_rack_dhcp_received_total", {"type": "DISCOVER"}) == 2


async def test_a_region_away_silences_a_discover_and_counts_the_error_by_operation_and_code(rack: Rack) -> None:
    rack.region.away = Unavailable("region away")

    await rack.receive(DISCOVER)

    assert rack.value("metalbus_rack_dhcp_silent_total", reason="source_unavailable") == 1
    assert rack.value("metalbus_rack_dhcp_region_errors_total", operation="offer", code="unavailable") == 1
    assert rack.value("metalbus_rack_dhcp_region_request_seconds_count", operation="offer") == 1
    assert rack.transport.sent == []


async def test_every_region_request_is_timed_into_its_operations_histogram() -> None:
    rack = Rack(FakeRegion(), step=0.02)

    await rack.cache.refresh()
    await rack.receive(DISCOVER, SELECTING, RENEWING, RELEASE, DECLINE)

    for operation in ("snapshot", "offer", "commit", "renew", "release", "decline"):
        assert rack.value("metalbus_rack_dhcp_region_request_seconds_count", operation=operation) == 1, operation
        assert rack.value("metalbus_rack_dhcp_region_request_seconds_sum", operation=operation) == pytest.approx(0.02)
        assert rack.value("metalbus_rack_dhcp_region_request_seconds_bucket", operation=operation, le="0.01") == 0
        assert rack.value("metalbus_rack_dhcp_region_request_seconds_bucket", operation=operation, le="0.025") == 1


async def test_a_renewal_answered_from_the_cache_is_counted_logged_as_cache_and_reconciled_later(rack: Rack) -> None:
    await rack.cache.refresh()
    rack.region.away = Unavailable("region away")

    with capture_logs() as logs:
        await rack.receive(RENEWING)

    assert rack.value("metalbus_rack_dhcp_replied_total", type="ACK") == 1
    assert rack.value("metalbus_rack_dhcp_cache_local_renewals_total") == 1
    assert rack.value("metalbus_rack_dhcp_cache_pending_renewals") == 1
    assert rack.value("metalbus_rack_dhcp_region_errors_total", operation="renew", code="unavailable") == 1
    [line] = lease_lines(logs)
    assert (line["type"], line["ip"], line["source"]) == ("ACK", str(IP), "cache")

    rack.region.away = None
    await rack.cache.refresh()

    assert rack.value("metalbus_rack_dhcp_cache_reconciled_total") == 1
    assert rack.value("metalbus_rack_dhcp_cache_pending_renewals") == 0
    assert rack.value("metalbus_rack_dhcp_cache_refreshes_total") == 2


async def test_each_lease_event_is_one_info_line_with_mac_ip_subnet_type_rack_xid_and_source(rack: Rack) -> None:
    with capture_logs() as logs:
        await rack.receive(DISCOVER, SELECTING, INFORM, RELEASE, DECLINE)

    expected = {"mac": MAC, "ip": str(IP), "rack": "rack-1", "xid": "0x2a2a2a2a", "source": "region"}
    lines = lease_lines(logs)
    assert [line["type"] for line in lines] == ["OFFER", "ACK", "RELEASE", "DECLINE"]  # INFORM leases nothing
    for line in lines:
        assert line["log_level"] == "info"
        assert {key: line[key] for key in expected} == expected
    assert [line["subnet"] for line in lines] == ["10.20.0.0/24", "10.20.0.0/24", None, None]


async def test_a_nak_is_logged_with_the_address_the_client_asked_for(rack: Rack) -> None:
    rack.region.renew_error = NotFound("no binding")

    with capture_logs() as logs:
        await rack.receive(RENEWING)

    [line] = lease_lines(logs)
    assert (line["type"], line["ip"], line["subnet"], line["source"]) == ("NAK", str(IP), None, "region")
    assert rack.value("metalbus_rack_dhcp_replied_total", type="NAK") == 1


@pytest.mark.parametrize(
    ("mask", "subnet"),
    [("255.255.255.0", "10.20.0.0/24"), ("255.255.240.0", "10.20.0.0/20"), ("255.0.255.0", None)],
)
def test_the_lease_line_names_the_subnet_from_yiaddr_and_a_contiguous_mask(mask: str, subnet: str | None) -> None:
    ack = DhcpMessage(
        op=BOOTREPLY,
        xid=XID,
        chaddr=CHADDR,
        yiaddr=IP,
        options=((Option.MESSAGE_TYPE, bytes([MessageType.ACK])), (Option.SUBNET_MASK, IPv4Address(mask).packed)),
    )

    assert lease_fields(decode_message(SELECTING), ack, "rack-1", "region")["subnet"] == subnet


async def test_scraping_reads_the_counters_and_counts_nothing_itself(rack: Rack) -> None:
    await rack.receive(DISCOVER)

    first = rack.value("metalbus_rack_dhcp_received_total", type="DISCOVER")
    second = rack.value("metalbus_rack_dhcp_received_total", type="DISCOVER")

    assert (first, second, rack.metrics.counters.received["DISCOVER"]) == (1, 1, 1)


# -- the endpoint -------------------------------------------------------------------------------------------------


@pytest.fixture
def registry() -> Iterator[CollectorRegistry]:
    registry = CollectorRegistry()
    Counter("metalbus_test_things", "Things.", registry=registry).inc(3)
    yield registry


async def test_the_endpoint_serves_the_registry_at_get_metrics_only(registry: CollectorRegistry) -> None:
    endpoint = MetricsEndpoint(registry)
    await endpoint.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{endpoint.port}", timeout=5) as client:
            metrics = await client.get("/metrics")
            elsewhere = await client.get("/")
            posted = await client.post("/metrics")
    finally:
        await endpoint.close()

    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=")
    [family] = [
        family for family in text_string_to_metric_families(metrics.text) if family.name == "metalbus_test_things"
    ]
    assert [sample.value for sample in family.samples if sample.name == "metalbus_test_things_total"] == [3]
    assert (elsewhere.status_code, posted.status_code) == (404, 405)


async def test_the_endpoint_stops_listening_when_closed(registry: CollectorRegistry) -> None:
    endpoint = MetricsEndpoint(registry)
    await endpoint.start("127.0.0.1", 0)
    port = endpoint.port
    await endpoint.close()

    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)


async def test_port_zero_serves_nothing(registry: CollectorRegistry) -> None:
    async with serving_metrics(registry, "127.0.0.1", 0) as endpoint:
        assert endpoint is None
