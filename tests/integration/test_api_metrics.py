"""GET /metrics: Prometheus text with requests by route template and status, latency, and region errors by code."""

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NatsServer
from tests.integration.test_api_auth import UNKNOWN_KEY, api_stack, authorized
from tests.integration.test_api_machines import create, manual_node


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_requests_by_route_and_status_and_region_errors_by_code(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        machine = await create(stack, manual_node(1))
        await stack.client.get(f"/api/v1/machines/{machine['system_id']}")
        for _ in range(2):
            await stack.client.get("/api/v1/machines/zz99zz")
        await stack.client.get("/api/v1/subnets", headers=authorized(UNKNOWN_KEY))

        response = await stack.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        values = samples(response.text)

    def requests(method: str, route: str, status: str) -> float | None:
        labels = frozenset({("method", method), ("route", route), ("status", status)})
        return values.get(("metalbus_api_requests_total", labels))

    assert requests("POST", "/api/v1/machines", "201") == 1
    assert requests("GET", "/api/v1/machines/{system_id}", "200") == 1
    assert requests("GET", "/api/v1/machines/{system_id}", "404") == 2
    assert requests("GET", "/api/v1/subnets", "401") == 1
    latency = frozenset({("method", "GET"), ("route", "/api/v1/machines/{system_id}")})
    assert values[("metalbus_api_request_duration_seconds_count", latency)] == 3
    not_found = frozenset({("subject", "region.machines.get"), ("code", "not_found")})
    assert values[("metalbus_api_region_errors_total", not_found)] == 2
    refused_key = frozenset({("subject", "region.apikeys.check"), ("code", "forbidden")})
    assert values[("metalbus_api_region_errors_total", refused_key)] == 1
    assert values[("metalbus_api_event_streams_open", frozenset())] == 0
