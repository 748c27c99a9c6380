"""The error answers each route declares in OpenAPI, all with the one envelope model (``ErrorResponse``)."""

from typing import Any

from metalbus_api.errors import ErrorResponse

DESCRIPTIONS: dict[int, str] = {
    400: "bad_request: the region refused the request's content",
    401: "unauthorized: API key missing, malformed or not valid (WWW-Authenticate: Bearer)",
    403: "forbidden",
    404: "not_found",
    409: "conflict, or invalid_transition (with current_status on machine routes)",
    422: "the request's body, path or query does not validate (fields names each problem)",
    500: "internal: an error the region or the api did not expect",
    503: "unavailable: the region, PostgreSQL or NATS is away; retry after Retry-After seconds",
    504: "timeout: the region did not answer in time",
}

# Every route that asks the region can meet these.
ALWAYS = (401, 422, 500, 503, 504)


def error_responses(*extra: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` argument for a route: the always-possible errors plus ``extra`` ones."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*ALWAYS, *extra}):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": DESCRIPTIONS[status]}
        if status == 503:
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
        responses[status] = entry
    return responses
