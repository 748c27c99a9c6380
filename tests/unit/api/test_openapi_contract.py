"""The OpenAPI document is the contract the CLI and integrators build on: its routes, security and error answers."""

from typing import Any

import pytest

from metalbus.contracts.leases import SubnetUpdate
from metalbus.contracts.machines import MachineUpdate
from metalbus_api.app import create_app
from metalbus_api.bodies import MachinePatch, SubnetPatch
from metalbus_api.settings import ApiSettings

ROUTES = {
    ("GET", "/api/v1/health"),
    ("GET", "/api/v1/machines"),
    ("POST", "/api/v1/machines"),
    ("GET", "/api/v1/machines/{system_id}"),
    ("PATCH", "/api/v1/machines/{system_id}"),
    ("DELETE", "/api/v1/machines/{system_id}"),
    ("POST", "/api/v1/machines/{system_id}/commission"),
    ("POST", "/api/v1/machines/{system_id}/abort"),
    ("POST", "/api/v1/machines/{system_id}/mark-broken"),
    ("POST", "/api/v1/machines/{system_id}/mark-fixed"),
    ("POST", "/api/v1/machines/{system_id}/power"),
    ("GET", "/api/v1/machines/{system_id}/inventory"),
    ("GET", "/api/v1/machines/{system_id}/results"),
    ("GET", "/api/v1/subnets"),
    ("POST", "/api/v1/subnets"),
    ("PATCH", "/api/v1/subnets/{subnet_id}"),
    ("GET", "/api/v1/racks"),
    ("GET", "/api/v1/leases"),
    ("GET", "/api/v1/boot-resources"),
    ("PUT", "/api/v1/boot-resources"),
    ("GET", "/api/v1/scripts"),
    ("PUT", "/api/v1/scripts/{name}"),
    ("DELETE", "/api/v1/scripts/{name}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/events/stream"),
    ("GET", "/metrics"),
}
PUBLIC = {("GET", "/api/v1/health")}
ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(ApiSettings()).openapi()


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in document["paths"].items() for method, op in ops.items()}


def test_the_document_lists_exactly_the_routes_of_the_api_brief(document: dict[str, Any]) -> None:
    assert set(operations(document)) == ROUTES


def test_every_route_but_health_requires_the_bearer_key(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "mb_<key_id>_<secret>",
        "description": "An API key made with `metalbus admin` (region subject region.apikeys.create).",
    }
    for route, op in operations(document).items():
        assert (op.get("security") == [{"ApiKey": []}]) is (route not in PUBLIC), route


def error_schema(op: dict[str, Any], status: int) -> Any:
    return op["responses"][str(status)]["content"]["application/json"]["schema"]


def test_every_protected_route_declares_its_errors_with_the_envelope(document: dict[str, Any]) -> None:
    for (method, path), op in operations(document).items():
        if (method, path) in PUBLIC:
            continue
        expected = {401, 422, 500, 503, 504}
        if "{system_id}" in path or "{subnet_id}" in path:
            expected.add(404)
        if method in {"POST", "PATCH", "DELETE"} and "{system_id}" in path:
            expected.add(409)
        for status in expected:
            assert error_schema(op, status) == ENVELOPE, (method, path, status)
        assert "Retry-After" in op["responses"]["503"]["headers"]


def referenced_schemas(document: dict[str, Any], node: Any, seen: set[str]) -> set[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                referenced_schemas(document, document["components"]["schemas"][name], seen)
        for value in node.values():
            referenced_schemas(document, value, seen)
    elif isinstance(node, list):
        for value in node:
            referenced_schemas(document, value, seen)
    return seen


def test_no_response_schema_can_carry_bmc_secrets(document: dict[str, Any]) -> None:
    responses = [op["responses"] for op in operations(document).values()]
    names = referenced_schemas(document, responses, set())
    assert {"Machine", "MachinePage", "PowerResult", "EventPage"} <= names
    for name in names:
        assert "power_secrets" not in document["components"]["schemas"][name].get("properties", {}), name
    # …while the request that sets them does document them:
    assert "power_secrets" in document["components"]["schemas"]["MachineCreate"]["properties"]


@pytest.mark.parametrize(
    ("body", "contract", "id_field"),
    [(MachinePatch, MachineUpdate, "system_id"), (SubnetPatch, SubnetUpdate, "subnet_id")],
)
def test_patch_bodies_are_their_update_contract_without_the_id(body: Any, contract: Any, id_field: str) -> None:
    body_fields = body.model_json_schema()["properties"]
    contract_fields = contract.model_json_schema()["properties"]
    expected = {name: spec for name, spec in contract_fields.items() if name not in {id_field, "schema_version"}}
    assert body_fields == expected
