"""Run a service's main coroutine until SIGTERM or SIGINT, then let it shut down cleanly."""

import asyncio
import signal
from collections.abc import Awaitable, Callable

from metalbus.contracts.errors import Unavailable


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    async def supervise() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    try:
        asyncio.run(supervise())
    except Unavailable as error:
        raise SystemExit(f"metalbus: {error.message}") from None
