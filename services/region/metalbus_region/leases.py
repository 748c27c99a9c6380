"""PLACEHOLDER: replaced by the leases area's implementation."""

from metalbus_region.context import RegionContext, Route


def routes(ctx: RegionContext) -> list[Route]:
    return []
