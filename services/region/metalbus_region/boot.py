"""PLACEHOLDER: replaced by the boot area's implementation."""

from metalbus_region.context import RegionContext, Route


def routes(ctx: RegionContext) -> list[Route]:
    return []
