"""A failed command ends with one line ``metalbus: <message>`` on stderr and exit status 1, whatever went wrong."""

import httpx
import pytest
from typer.testing import CliRunner

from metalbus.cli.client import ApiError, error_from_response
from metalbus.cli.failures import describe_api_error
from metalbus.cli.main import app
from metalbus.cli.session import CliEnvironment
from tests.unit.cli.fake_api import BASE_URL, GOOD_KEY, FakeApi, envelope

ENVIRON = {"METALBUS_URL": BASE_URL, "METALBUS_API_KEY": GOOD_KEY}


def run_against(fake: FakeApi, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), obj=fake.environment(**ENVIRON))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (envelope(401, "unauthorized", "missing or invalid API key"), "not logged in or key refused"),
        (envelope(403, "forbidden", "not yours"), "forbidden: not yours"),
        (envelope(404, "not_found", "no machine zzzzzz"), "no machine zzzzzz"),
        (
            envelope(409, "invalid_transition", "cannot commission", current_status="commissioning"),
            "cannot commission (current status: commissioning)",
        ),
        (envelope(409, "conflict", "boot MAC already taken"), "boot MAC already taken"),
        (
            envelope(422, "bad_request", "invalid", fields=[{"field": "body.boot_mac", "message": "not a MAC"}]),
            "invalid request: body.boot_mac: not a MAC",
        ),
        (
            httpx.Response(422, json={"detail": [{"loc": ["query", "limit"], "msg": "too big"}]}),
            "invalid request: query.limit: too big",
        ),
        (envelope(400, "bad_request", "range outside the subnet"), "bad request: range outside the subnet"),
        (envelope(503, "unavailable", "no region"), "region unavailable, retry after 1 s (no region)"),
        (envelope(504, "timeout", "no reply in 3s"), "the region did not answer in time, retry (no reply in 3s)"),
        (envelope(500, "internal", "boom"), "internal error in the API: boom"),
        (httpx.Response(502, text="Bad Gateway"), "HTTP 502: Bad Gateway"),
    ],
)  # fmt: skip
def test_each_api_answer_becomes_one_line_and_exit_1(response: httpx.Response, message: str) -> None:
    fake = FakeApi(forced={"GET /api/v1/machines/x7kq2m": response})
    code, stdout, stderr = run_against(fake, "machines", "show", "x7kq2m")
    assert (code, stdout, stderr) == (1, "", f"metalbus: {message}\n")


def test_an_unreachable_api_is_named_in_the_one_line() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    environment = CliEnvironment(environ=ENVIRON, transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(app, ["machines", "list"], obj=environment)
    assert result.exit_code == 1
    assert result.stderr == f"metalbus: cannot reach the API at {BASE_URL}: connection refused\n"


def test_the_error_envelope_keeps_code_retryable_and_extra_fields() -> None:
    error = error_from_response(envelope(409, "invalid_transition", "no", current_status="ready"))
    assert (error.status, error.code, error.message, error.retryable) == (409, "invalid_transition", "no", False)
    assert error.details == {"current_status": "ready"}
    unavailable = error_from_response(envelope(503, "unavailable", "later"))
    assert (unavailable.retryable, unavailable.retry_after) == (True, "1")
    assert describe_api_error(ApiError(409, "invalid_transition", "no", details={"current_status": None})) == "no"


def test_a_409_from_the_real_route_shape_names_the_current_status() -> None:
    fake = FakeApi()
    fake.machines["x7kq2m"]["status"] = "broken"
    code, _, stderr = run_against(fake, "machines", "commission", "x7kq2m")
    assert (code, stderr) == (1, "metalbus: cannot commission a broken machine (current status: broken)\n")
