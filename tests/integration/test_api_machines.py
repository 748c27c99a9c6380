"""Machine routes through the api into a real region: create, read, list, change, delete, the actions and their
409s with the current status, power, commissioning with wait, inventory and results."""

import asyncio
import json
import time
from typing import Any

import httpx

from metalbus.contracts.boot import BootConfigQuery
from metalbus.contracts.common import Architecture
from metalbus.contracts.metadata import MetadataSignal, ScriptResult, SignalStatus
from metalbus.subjects import BOOT_CONFIG, METADATA_SIGNAL
from tests.conftest import NatsServer
from tests.integration.test_api_auth import ApiStack, api_stack
from tests.integration.test_commissioning_journey import INVENTORY, credentials_from

NODE = {
    "hostname": "node-1",
    "architecture": "amd64/bios",
    "boot_mac": "52:54:00:12:34:56",
    "power_type": "ipmi",
    "power_parameters": {"address": "10.0.0.21", "port": 623, "username": "admin"},
    "power_secrets": {"password": "bmc-s3cret"},
}


def manual_node(n: int) -> dict[str, Any]:
    return {"hostname": f"node-{n}", "boot_mac": f"52:54:00:00:00:{n:02x}", "power_type": "manual"}


async def create(stack: ApiStack, body: dict[str, Any]) -> dict[str, Any]:
    response = await stack.client.post("/api/v1/machines", json=body)
    assert response.status_code == 201, response.text
    machine: dict[str, Any] = response.json()
    return machine


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    return error


async def test_a_machine_is_created_read_listed_changed_and_deleted(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        machine = await create(stack, NODE)
        assert "bmc-s3cret" not in json.dumps(machine)
        assert "power_secrets" not in machine
        assert (machine["hostname"], machine["status"], machine["bmc_address"]) == ("node-1", "new", "10.0.0.21")
        url = f"/api/v1/machines/{machine['system_id']}"
        assert (await stack.client.get(url)).json() == machine

        changed = await stack.client.patch(url, json={"hostname": "node-renamed", "power_secrets": {"password": "x"}})
        assert changed.status_code == 200
        assert changed.json()["hostname"] == "node-renamed"
        assert changed.json()["boot_mac"] == "52:54:00:12:34:56"
        assert "power_secrets" not in changed.json()
        assert (await stack.client.get(url)).json()["hostname"] == "node-renamed"

        deleted = await stack.client.delete(url)
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert error_of(await stack.client.get(url), 404)["code"] == "not_found"


async def test_machines_are_listed_by_filter_and_page(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        machines = [await create(stack, manual_node(n)) for n in (3, 1, 2)]
        first = await stack.client.get("/api/v1/machines", params={"limit": 2})
        assert first.status_code == 200
        assert [m["hostname"] for m in first.json()["items"]] == ["node-1", "node-2"]
        assert (first.json()["total"], first.json()["offset"], first.json()["limit"]) == (3, 0, 2)
        rest = (await stack.client.get("/api/v1/machines", params={"limit": 2, "offset": 2})).json()
        assert ([m["hostname"] for m in rest["items"]], rest["total"], rest["offset"]) == (["node-3"], 3, 2)

        await stack.client.post(f"/api/v1/machines/{machines[0]['system_id']}/mark-broken", json={})
        broken = (await stack.client.get("/api/v1/machines", params={"status": "broken"})).json()
        assert ([m["hostname"] for m in broken["items"]], broken["total"]) == (["node-3"], 1)
        by_name = (await stack.client.get("/api/v1/machines", params={"hostname": "node-2"})).json()
        assert [m["system_id"] for m in by_name["items"]] == [machines[2]["system_id"]]
        arm = (await stack.client.get("/api/v1/machines", params={"architecture": "arm64/uefi"})).json()
        assert (arm["items"], arm["total"]) == ([], 0)


async def test_the_idempotency_key_header_applies_a_create_once(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        headers = {"Idempotency-Key": "create-node-1-0001"}
        first = await stack.client.post("/api/v1/machines", json=manual_node(1), headers=headers)
        again = await stack.client.post("/api/v1/machines", json=manual_node(1), headers=headers)
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert (await stack.client.get("/api/v1/machines")).json()["total"] == 1
        # Without the key, the same machine again is a conflict on its boot MAC.
        error = error_of(await stack.client.post("/api/v1/machines", json=manual_node(1)), 409)
        assert (error["code"], error["retryable"]) == ("conflict", False)
        assert "boot MAC" in error["message"] or "hostname" in error["message"]


async def test_invalid_requests_are_422_naming_the_field(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        machine = await create(stack, manual_node(1))
        url = f"/api/v1/machines/{machine['system_id']}"
        cases = [
            ("POST", "/api/v1/machines", {"json": {"boot_mac": "not-a-mac"}}, "body.boot_mac"),
            ("POST", "/api/v1/machines", {"json": {"boot_mac": "52:54:00:00:00:09", "power_type": "x"}},
             "body.power_type"),
            ("POST", "/api/v1/machines", {"json": manual_node(9), "headers": {"Idempotency-Key": "short"}},
             "header.Idempotency-Key"),
            ("GET", "/api/v1/machines/NOT-AN-ID", {}, "path.system_id"),
            ("GET", "/api/v1/machines", {"params": {"limit": 0}}, "query.limit"),
            ("GET", "/api/v1/machines", {"params": {"status": "sleeping"}}, "query.status"),
            ("PATCH", url, {"json": {"hostname": "Not_A_Hostname"}}, "body.hostname"),
            ("POST", f"{url}/commission", {"json": {"timeout_s": -1}}, "body.timeout_s"),
            ("POST", f"{url}/power", {"json": {"action": "explode"}}, "body.action"),
            ("POST", f"{url}/power", {}, "body"),
        ]  # fmt: skip
        for method, path, kwargs, field in cases:
            error = error_of(await stack.client.request(method, path, **kwargs), 422)
            assert error["code"] == "bad_request", (method, path)
            assert field in [problem["field"] for problem in error["fields"]], (method, path, error)
        assert (await stack.client.get(url)).json() == machine  # nothing changed


async def test_every_machine_route_answers_404_for_an_unknown_machine(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        url = "/api/v1/machines/zz99zz"
        for method, path, body in [
            ("GET", url, None),
            ("PATCH", url, {"hostname": "other"}),
            ("DELETE", url, None),
            ("POST", f"{url}/commission", {}),
            ("POST", f"{url}/abort", {}),
            ("POST", f"{url}/mark-broken", {"reason": "smoke"}),
            ("POST", f"{url}/mark-fixed", None),
            ("POST", f"{url}/power", {"action": "query"}),
            ("GET", f"{url}/inventory", None),
            ("GET", f"{url}/results", None),
        ]:
            error = error_of(await stack.client.request(method, path, json=body), 404)
            assert (error["code"], error["retryable"]) == ("not_found", False), (method, path)
            assert "zz99zz" in error["message"]


async def test_an_action_the_status_does_not_allow_is_409_naming_the_current_status(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn) as stack:
        machine = await create(stack, manual_node(1))
        url = f"/api/v1/machines/{machine['system_id']}"

        refused = error_of(await stack.client.post(f"{url}/abort"), 409)
        assert (refused["code"], refused["current_status"]) == ("invalid_transition", "new")

        broken = await stack.client.post(f"{url}/mark-broken", json={"reason": "fan noise"})
        assert (broken.status_code, broken.json()["status"], broken.json()["status_reason"]) == (
            200,
            "broken",
            "fan noise",
        )
        assert error_of(await stack.client.post(f"{url}/mark-broken"), 409)["current_status"] == "broken"
        assert error_of(await stack.client.post(f"{url}/commission"), 409)["current_status"] == "broken"
        assert (await stack.client.post(f"{url}/mark-fixed")).json()["status"] == "new"

        commissioning = await stack.client.post(f"{url}/commission", json={"timeout_s": 600})
        assert commissioning.json()["status"] == "commissioning"
        assert commissioning.json()["commissioning_deadline"] is not None
        deleting = error_of(await stack.client.delete(url), 409)
        assert deleting["current_status"] == "commissioning"
        assert error_of(await stack.client.post(f"{url}/mark-fixed"), 409)["current_status"] == "commissioning"

        aborted = await stack.client.post(f"{url}/abort", json={"reason": "wrong rack"})
        assert aborted.json()["status"] == "new"
        assert (await stack.client.delete(url)).status_code == 204


async def test_power_needs_a_bmc_a_rack_can_reach(nats_server: NatsServer, database_dsn: str) -> None:
    async with api_stack(nats_server, database_dsn, power_timeout_s=10) as stack:
        manual = await create(stack, manual_node(2))
        error = error_of(
            await stack.client.post(f"/api/v1/machines/{manual['system_id']}/power", json={"action": "on"}), 400
        )
        assert error["code"] == "bad_request"

        ipmi = await create(stack, NODE)
        unreachable = await stack.client.post(f"/api/v1/machines/{ipmi['system_id']}/power", json={"action": "query"})
        error = error_of(unreachable, 503)
        assert (error["code"], error["retryable"]) == ("unavailable", True)
        assert unreachable.headers["retry-after"] == "2"
        # Commissioning a machine no rack can power on fails at once, and says why.
        failed = await stack.client.post(f"/api/v1/machines/{ipmi['system_id']}/commission", json={"wait": True})
        assert failed.json()["status"] == "failed_commissioning"
        assert failed.json()["status_reason"].startswith("power on failed")


async def test_commission_with_wait_answers_when_the_machine_reports_ready(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn, commission_poll_s=30) as stack:
        resource = {"architecture": "amd64/bios", "purpose": "commissioning", "kernel": "images/vmlinuz",
                    "initrd": "images/initrd.img"}  # fmt: skip
        assert (await stack.client.put("/api/v1/boot-resources", json=resource)).status_code == 200
        machine = await create(stack, manual_node(1))
        url = f"/api/v1/machines/{machine['system_id']}"
        assert error_of(await stack.client.get(f"{url}/inventory"), 404)["code"] == "not_found"
        assert (await stack.client.get(f"{url}/results")).json() == []

        started = time.monotonic()
        waiting = asyncio.create_task(stack.client.post(f"{url}/commission", json={"wait": True, "wait_timeout_s": 30}))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        # The machine PXE-boots, reads its credentials and reports its inventory (played over NATS).
        boot = await stack.bus.request(
            BOOT_CONFIG,
            BootConfigQuery(mac=manual_node(1)["boot_mac"], architecture=Architecture.AMD64_BIOS, rack_id="rack-1",
                            rack_address="10.20.0.2"),
        )  # fmt: skip
        await stack.bus.request(
            METADATA_SIGNAL,
            MetadataSignal(
                credentials=credentials_from(boot.kernel_command_line),
                status=SignalStatus.OK,
                results=[ScriptResult(name="metalbus-inventory", exit_status=0, stdout=json.dumps(INVENTORY))],
            ),
        )
        answered = await asyncio.wait_for(waiting, timeout=10)
        assert answered.status_code == 200
        assert answered.json()["status"] == "ready"
        assert time.monotonic() - started < 10  # woken by the event, not by the 30 s poll

        inventory = (await stack.client.get(f"{url}/inventory")).json()
        assert (inventory["cpu_count"], inventory["memory_mib"]) == (2, 2048)
        assert [i["name"] for i in inventory["interfaces"]] == ["ens3"]
        [result] = (await stack.client.get(f"{url}/results")).json()
        assert (result["name"], result["exit_status"]) == ("metalbus-inventory", 0)


async def test_commission_with_wait_answers_when_its_wait_or_the_api_cap_is_over(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with api_stack(nats_server, database_dsn, commission_wait_cap_s=0.8, commission_poll_s=0.2) as stack:
        machines = [await create(stack, manual_node(n)) for n in (1, 2)]
        for machine, wait_timeout_s, expected_s in ((machines[0], 0.3, 0.3), (machines[1], 1800, 0.8)):
            started = time.monotonic()
            response = await stack.client.post(
                f"/api/v1/machines/{machine['system_id']}/commission",
                json={"wait": True, "wait_timeout_s": wait_timeout_s},
            )
            elapsed = time.monotonic() - started
            assert response.json()["status"] == "commissioning"
            assert expected_s <= elapsed < expected_s + 2, (wait_timeout_s, elapsed)
