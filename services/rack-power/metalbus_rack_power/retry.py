"""Retrying a BMC call after a transient failure (unreachable, silent), with exponential backoff.

Only :class:`Unavailable` is transient: refused credentials or an unsupported operation fail at once, since
asking again cannot help.
"""

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from metalbus.contracts.errors import Unavailable

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def delays(self) -> list[float]:
        """The wait before each retry: backoff, doubled each time, capped."""
        return [min(self.backoff_s * 2**attempt, self.max_backoff_s) for attempt in range(self.retries)]


async def with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``call()``; after an Unavailable, wait and call again, as often as the policy allows."""
    for delay in policy.delays():
        try:
            return await call()
        except Unavailable:
            await sleep(delay)
    return await call()
