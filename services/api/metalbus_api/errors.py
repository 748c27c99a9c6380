"""Every failure as the one HTTP error envelope: typed bus errors, validation, auth, unknown routes, the unexpected.

Body, always: ``{"error": {"code", "message", "retryable", …extra}}``. Status from the error type (bad_request 400,
forbidden 403, not_found 404, conflict / invalid_transition 409, unavailable 503 with ``Retry-After``, timeout 504,
internal 500); FastAPI's request validation is 422 naming the fields; a missing or bad API key is 401 with
``WWW-Authenticate: Bearer``. A last-resort middleware turns any other exception into the 500 envelope.
"""

from enum import StrEnum
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metalbus.contracts.errors import ErrorCode, InvalidTransition, MetalbusError, Unavailable
from metalbus.contracts.machines import MachineStatus

log = structlog.get_logger("metalbus.api")


class HttpErrorCode(StrEnum):
    """The bus error codes, plus ``unauthorized`` (HTTP only: the key is missing, malformed or unknown)."""

    BAD_REQUEST = ErrorCode.BAD_REQUEST.value
    NOT_FOUND = ErrorCode.NOT_FOUND.value
    CONFLICT = ErrorCode.CONFLICT.value
    INVALID_TRANSITION = ErrorCode.INVALID_TRANSITION.value
    FORBIDDEN = ErrorCode.FORBIDDEN.value
    UNAVAILABLE = ErrorCode.UNAVAILABLE.value
    TIMEOUT = ErrorCode.TIMEOUT.value
    INTERNAL = ErrorCode.INTERNAL.value
    UNAUTHORIZED = "unauthorized"


class FieldProblem(BaseModel):
    field: str
    message: str


class ErrorDetail(BaseModel):
    code: HttpErrorCode
    message: str
    retryable: bool
    current_status: MachineStatus | None = None
    fields: list[FieldProblem] | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Unauthorized(Exception):
    """No usable API key: answered 401 with ``WWW-Authenticate: Bearer``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MachineTransitionRefused(InvalidTransition):
    """An action the machine's status does not allow, with that status (409 ``current_status``)."""

    def __init__(self, message: str, current_status: MachineStatus | None) -> None:
        super().__init__(message)
        self.current_status = current_status


def envelope(detail: ErrorDetail) -> dict[str, Any]:
    return {"error": detail.model_dump(mode="json", exclude_none=True)}


def metalbus_error_response(error: MetalbusError, *, retry_after_s: int) -> JSONResponse:
    detail = ErrorDetail(code=HttpErrorCode(error.code.value), message=error.message, retryable=error.retryable)
    if isinstance(error, MachineTransitionRefused):
        detail.current_status = error.current_status
    headers = {"Retry-After": str(retry_after_s)} if isinstance(error, Unavailable) else None
    return JSONResponse(status_code=error.http_status, content=envelope(detail), headers=headers)


def unauthorized_response(error: Unauthorized) -> JSONResponse:
    detail = ErrorDetail(code=HttpErrorCode.UNAUTHORIZED, message=error.message, retryable=False)
    return JSONResponse(status_code=401, content=envelope(detail), headers={"WWW-Authenticate": "Bearer"})


def field_name(location: tuple[int | str, ...] | list[int | str]) -> str:
    return ".".join(str(part) for part in location) or "<body>"


def validation_response(problems: list[FieldProblem]) -> JSONResponse:
    summary = "; ".join(f"{problem.field}: {problem.message}" for problem in problems[:5])
    detail = ErrorDetail(
        code=HttpErrorCode.BAD_REQUEST, message=f"invalid request: {summary}", retryable=False, fields=problems
    )
    return JSONResponse(status_code=422, content=envelope(detail))


def http_exception_response(error: StarletteHTTPException) -> JSONResponse:
    """Unknown paths (404), wrong methods (405) and other framework refusals, in the envelope."""
    if error.status_code == 401:
        return unauthorized_response(Unauthorized(str(error.detail)))
    code = {404: HttpErrorCode.NOT_FOUND, 409: HttpErrorCode.CONFLICT, 403: HttpErrorCode.FORBIDDEN}.get(
        error.status_code, HttpErrorCode.BAD_REQUEST if error.status_code < 500 else HttpErrorCode.INTERNAL
    )
    detail = ErrorDetail(code=code, message=str(error.detail), retryable=False)
    return JSONResponse(status_code=error.status_code, content=envelope(detail), headers=error.headers)


def install_error_handlers(app: FastAPI, *, retry_after_s: int) -> None:
    async def on_metalbus_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, MetalbusError)
        if error.http_status >= 500:
            log.warning("api.region_error", code=error.code.value, message=error.message)
        return metalbus_error_response(error, retry_after_s=retry_after_s)

    async def on_unauthorized(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, Unauthorized)
        return unauthorized_response(error)

    async def on_request_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return validation_response(
            [FieldProblem(field=field_name(item["loc"]), message=item["msg"]) for item in error.errors()]
        )

    async def on_model_validation(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ValidationError)
        return validation_response(
            [FieldProblem(field=field_name(item["loc"]), message=item["msg"]) for item in error.errors()]
        )

    async def on_http_exception(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        return http_exception_response(error)

    app.add_exception_handler(MetalbusError, on_metalbus_error)
    app.add_exception_handler(Unauthorized, on_unauthorized)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_model_validation)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)


class CatchAllErrors:
    """ASGI middleware: an exception nothing else handled becomes the 500 envelope (never a bare 500).

    The message names only the exception type: its text may hold request data. If the response had already
    started (a stream), the connection is closed instead; either way the error is logged once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            log.exception("api.unhandled_error", path=scope.get("path"), error_type=type(error).__name__)
            if started:
                raise
            detail = ErrorDetail(
                code=HttpErrorCode.INTERNAL, message=f"unexpected {type(error).__name__}", retryable=False
            )
            await JSONResponse(status_code=500, content=envelope(detail))(scope, receive, send)
