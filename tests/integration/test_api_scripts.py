"""Commissioning scripts through the HTTP API: PUT by name, list, choose them in a commission call, delete."""

from tests.conftest import NatsServer
from tests.integration.test_api_auth import api_stack
from tests.integration.test_api_machines import create, error_of, manual_node

SCRIPT = {"content": "#!/bin/sh\nsmartctl -H /dev/sda\n", "description": "SMART health", "timeout_s": 120}


async def test_a_script_is_put_listed_chosen_by_a_commission_call_and_deleted(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        put = await stack.client.put("/api/v1/scripts/smart-health", json=SCRIPT)
        assert put.status_code == 200, put.text
        assert {key: put.json()[key] for key in ("name", "content", "timeout_s")} == {
            "name": "smart-health",
            "content": SCRIPT["content"],
            "timeout_s": 120,
        }
        assert [s["name"] for s in (await stack.client.get("/api/v1/scripts")).json()] == ["smart-health"]

        machine = await create(stack, manual_node(1))
        commission = f"/api/v1/machines/{machine['system_id']}/commission"
        unknown = await stack.client.post(commission, json={"scripts": ["nope"]})
        assert "no commissioning script nope" in error_of(unknown, 400)["message"]
        started = await stack.client.post(commission, json={"scripts": ["smart-health"]})
        assert (started.status_code, started.json()["status"]) == (200, "commissioning")

        busy = await stack.client.delete("/api/v1/scripts/smart-health")
        assert error_of(busy, 409)["code"] == "conflict"
        await stack.client.post(f"/api/v1/machines/{machine['system_id']}/abort", json={})
        deleted = await stack.client.delete("/api/v1/scripts/smart-health")
        assert (deleted.status_code, deleted.json()["name"]) == (200, "smart-health")
        assert error_of(await stack.client.delete("/api/v1/scripts/smart-health"), 404)["code"] == "not_found"


async def test_a_script_without_an_interpreter_line_or_with_a_reserved_name_is_a_422_with_the_reason(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        no_shebang = await stack.client.put("/api/v1/scripts/plain", json={"content": "echo hi\n"})
        reserved = await stack.client.put("/api/v1/scripts/metalbus-inventory", json=SCRIPT)

    assert "interpreter line" in error_of(no_shebang, 422)["message"]
    assert "region's own script" in error_of(reserved, 422)["message"]
