"""The api against its own OpenAPI document: schemathesis generates valid and invalid requests for every operation
(with a valid key, a real region behind) and checks that no answer is a 5xx or strays from the document.

Bounded: a few examples per operation and mode, no shrinking; the live event stream is left out (it never ends).
"""

import asyncio
import time

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import NatsServer
from tests.integration.test_api_auth import api_stack, authorized, served

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_MODE = 25
NOT_FUZZED = {("GET", "/api/v1/events/stream")}


def fuzz(url: str, key: str) -> tuple[list[str], int]:
    """Failures as one line each, and how many operations were fuzzed."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=10)
    session = requests.Session()
    failures: list[str] = []
    fuzzed = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_FUZZED:
            continue
        fuzzed += 1
        strategy = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(
            max_examples=2 * EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=url, session=session, headers=authorized(key), checks=CHECKS, timeout=15)

        try:
            exercise()
        except (AssertionError, BaseExceptionGroup) as error:  # a check failed: report them all at the end
            failures.append(f"{operation.method.upper()} {operation.path}: {str(error)[:2000]}")
    session.close()
    return failures, fuzzed


async def test_no_generated_request_gets_a_5xx_or_an_answer_outside_the_document(
    nats_server: NatsServer, database_dsn: str
) -> None:
    async with (
        api_stack(nats_server, database_dsn, commission_wait_cap_s=1, power_timeout_s=3) as stack,
        served(stack.app) as url,
    ):
        started = time.monotonic()
        failures, fuzzed = await asyncio.to_thread(fuzz, url, stack.key)
        elapsed = time.monotonic() - started
    assert fuzzed == 25
    assert not failures, "\n\n".join(failures)
    assert elapsed < 90
