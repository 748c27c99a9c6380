"""How a failed command ends: one line ``metalbus: <message>`` on stderr and exit status 1.

The table below turns each API answer (status, error code) into the sentence an operator needs; the tests walk it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from metalbus.cli.client import ApiError, ApiUnreachable, StreamIdle, describe_validation_detail
from metalbus.cli.config import ConfigError

EXIT_FAILURE = 1


def describe_api_error(error: ApiError) -> str:
    """The one-line explanation of a non-2xx answer."""
    message = error.message or "no details"
    match error.status:
        case 401:
            return "not logged in or key refused"
        case 403:
            return f"forbidden: {message}"
        case 404:
            return message if error.message else "not found"
        case 409 if error.details.get("current_status"):
            return f"{message} (current status: {error.details['current_status']})"
        case 409:
            return message
        case 422:
            return f"invalid request: {describe_fields(error) or message}"
        case 400:
            return f"bad request: {message}"
        case 503:
            after = f" after {error.retry_after} s" if error.retry_after else ""
            return f"region unavailable, retry{after} ({message})"
        case 504:
            return f"the region did not answer in time, retry ({message})"
        case 500:
            return f"internal error in the API: {message}"
        case _:
            return f"HTTP {error.status}: {message}"


def describe_fields(error: ApiError) -> str:
    """The fields a 422 names: the envelope's ``fields`` list, or FastAPI's own ``detail`` list."""
    fields = error.details.get("fields")
    if isinstance(fields, list):
        return "; ".join(
            f"{item.get('field')}: {item.get('message')}" if isinstance(item, dict) else str(item) for item in fields
        )
    detail = error.details.get("detail")
    return describe_validation_detail(detail) if detail else ""


def fail(message: str, exit_code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"metalbus: {message}", err=True)
    raise typer.Exit(exit_code)


@contextmanager
def reported_failures() -> Iterator[None]:
    """Run a command body; any API, connection or profile failure ends it with one line and exit 1."""
    try:
        yield
    except ApiError as error:
        fail(describe_api_error(error))
    except (ApiUnreachable, StreamIdle, ConfigError) as error:
        fail(str(error))
