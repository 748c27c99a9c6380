"""The one error hierarchy: each class maps 1:1 to a bus error envelope code and to an HTTP status."""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ErrorCode(StrEnum):
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID_TRANSITION = "invalid_transition"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    INTERNAL = "internal"


class ErrorEnvelope(BaseModel):
    """What travels on the bus in place of a reply when a request fails."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    code: ErrorCode
    message: str
    retryable: bool


class MetalbusError(Exception):
    """Base of every error that crosses the bus; subclasses fix the code, HTTP status and retryability."""

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(code=self.code, message=self.message, retryable=self.retryable)


class BadRequest(MetalbusError):
    code, http_status = ErrorCode.BAD_REQUEST, 400


class NotFound(MetalbusError):
    code, http_status = ErrorCode.NOT_FOUND, 404


class Conflict(MetalbusError):
    code, http_status = ErrorCode.CONFLICT, 409


class InvalidTransition(MetalbusError):
    code, http_status = ErrorCode.INVALID_TRANSITION, 409


class Forbidden(MetalbusError):
    code, http_status = ErrorCode.FORBIDDEN, 403


class Unavailable(MetalbusError):
    code, http_status, retryable = ErrorCode.UNAVAILABLE, 503, True


class Timeout(MetalbusError):
    code, http_status, retryable = ErrorCode.TIMEOUT, 504, True


class Internal(MetalbusError):
    code, http_status = ErrorCode.INTERNAL, 500


ERROR_CLASSES: dict[ErrorCode, type[MetalbusError]] = {
    cls.code: cls
    for cls in (BadRequest, NotFound, Conflict, InvalidTransition, Forbidden, Unavailable, Timeout, Internal)
}


def error_from_envelope(envelope: ErrorEnvelope) -> MetalbusError:
    """Rebuild the typed exception a remote handler raised; the envelope's retryable flag wins."""
    error = ERROR_CLASSES[envelope.code](envelope.message)
    error.retryable = envelope.retryable
    return error
