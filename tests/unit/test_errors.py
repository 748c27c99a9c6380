"""Every error code maps to one exception class, one HTTP status, and survives the bus envelope."""

import pytest

from metalbus.contracts.errors import (
    ERROR_CLASSES,
    ErrorCode,
    ErrorEnvelope,
    MetalbusError,
    Unavailable,
    error_from_envelope,
)

EXPECTED_HTTP = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
}


def test_every_code_has_exactly_one_class() -> None:
    assert set(ERROR_CLASSES) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_survives_the_envelope_with_code_status_and_message(code: ErrorCode) -> None:
    original = ERROR_CLASSES[code](f"something about {code.value}")
    wire = original.to_envelope().model_dump_json()
    rebuilt = error_from_envelope(ErrorEnvelope.model_validate_json(wire))
    assert type(rebuilt) is type(original)
    assert isinstance(rebuilt, MetalbusError)
    assert (rebuilt.code, rebuilt.message, rebuilt.http_status) == (
        code,
        original.message,
        EXPECTED_HTTP[code],
    )
    assert rebuilt.retryable == original.retryable


def test_only_unavailable_and_timeout_are_retryable_by_default() -> None:
    retryable = {code for code, cls in ERROR_CLASSES.items() if cls("x").retryable}
    assert retryable == {ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}


def test_the_remote_retryable_flag_wins() -> None:
    envelope = ErrorEnvelope(code=ErrorCode.UNAVAILABLE, message="down for good", retryable=False)
    rebuilt = error_from_envelope(envelope)
    assert isinstance(rebuilt, Unavailable)
    assert rebuilt.retryable is False
