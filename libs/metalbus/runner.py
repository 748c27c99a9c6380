"""Run a service's main coroutine until SIGTERM or SIGINT, then let it shut down cleanly."""

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from metalbus.contracts.errors import Unavailable

SHUTDOWN_GRACE_S = 8.0


def run_until_signalled(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    async def supervise() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        work = asyncio.create_task(main(stop))

        def on_signal() -> None:
            # Ask nicely; a service that cannot notice (still connecting, say) is cancelled after the grace.
            stop.set()
            loop.call_later(SHUTDOWN_GRACE_S, work.cancel)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        with contextlib.suppress(asyncio.CancelledError):
            await work

    try:
        asyncio.run(supervise())
    except Unavailable as error:
        raise SystemExit(f"metalbus: {error.message}") from None
