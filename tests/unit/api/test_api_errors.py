"""Every failure reaches the client as the one envelope with the right status and headers."""

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from metalbus.contracts.errors import ERROR_CLASSES, ErrorCode, Unavailable
from metalbus.contracts.machines import MachineStatus
from metalbus_api.errors import (
    CatchAllErrors,
    MachineTransitionRefused,
    Unauthorized,
    http_exception_response,
    install_error_handlers,
    metalbus_error_response,
)

HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_bus_error_becomes_its_status_and_envelope(code: ErrorCode) -> None:
    error = ERROR_CLASSES[code](f"about {code.value}")
    response = metalbus_error_response(error, retry_after_s=7)
    assert response.status_code == HTTP_STATUS[code]
    assert httpx.Response(200, content=response.body).json() == {
        "error": {"code": code.value, "message": f"about {code.value}", "retryable": error.retryable}
    }
    assert ("retry-after" in response.headers) is (code is ErrorCode.UNAVAILABLE)


def test_unavailable_says_when_to_retry() -> None:
    response = metalbus_error_response(Unavailable("region away"), retry_after_s=7)
    assert response.headers["retry-after"] == "7"


def test_a_refused_machine_action_names_the_current_status() -> None:
    response = metalbus_error_response(
        MachineTransitionRefused("cannot abort a machine that is new", MachineStatus.NEW), retry_after_s=1
    )
    assert response.status_code == 409
    assert httpx.Response(200, content=response.body).json()["error"] == {
        "code": "invalid_transition",
        "message": "cannot abort a machine that is new",
        "retryable": False,
        "current_status": "new",
    }


def test_unknown_paths_and_wrong_methods_use_the_envelope() -> None:
    not_found = http_exception_response(HTTPException(404, "Not Found"))
    wrong_method = http_exception_response(HTTPException(405, "Method Not Allowed", headers={"Allow": "GET"}))
    assert httpx.Response(200, content=not_found.body).json()["error"]["code"] == "not_found"
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "GET")
    assert httpx.Response(200, content=wrong_method.body).json()["error"]["code"] == "bad_request"


class Thing(BaseModel):
    size: int = Field(ge=1)


def small_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, retry_after_s=3)
    app.add_middleware(CatchAllErrors)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail that must not leak")

    @app.get("/who")
    async def who() -> None:
        raise Unauthorized("an API key is required")

    @app.post("/things")
    async def things(thing: Thing) -> Thing:
        return thing

    return app


async def call(method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=small_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


async def test_an_unexpected_exception_is_a_500_envelope_without_its_text() -> None:
    response = await call("GET", "/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"code": "internal", "message": "unexpected RuntimeError", "retryable": False}}


async def test_unauthorized_is_401_with_a_bearer_challenge() -> None:
    response = await call("GET", "/who")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


async def test_body_validation_is_422_naming_the_field() -> None:
    response = await call("POST", "/things", json={"size": 0})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "bad_request"
    assert [problem["field"] for problem in error["fields"]] == ["body.size"]
    assert "body.size" in error["message"]
