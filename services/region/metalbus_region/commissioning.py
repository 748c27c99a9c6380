"""PLACEHOLDER: replaced by the commissioning implementation (commission action, reaper)."""

import asyncio

from metalbus_region.context import RegionContext


async def run_reaper(ctx: RegionContext, stop: asyncio.Event) -> None:
    await stop.wait()
