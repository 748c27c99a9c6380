"""The api's one way to ask the region: a typed NATS request with the api's timeout, failures counted by code."""

from typing import Annotated, TypeVar

from fastapi import Depends, Request

from metalbus.bus import Bus
from metalbus.contracts.base import Message
from metalbus.contracts.errors import MetalbusError
from metalbus.subjects import RequestSubject
from metalbus_api.metrics import ApiMetrics

RequestT = TypeVar("RequestT", bound=Message)
ReplyT = TypeVar("ReplyT", bound=Message)


class RegionClient:
    def __init__(self, bus: Bus, metrics: ApiMetrics, *, timeout_s: float) -> None:
        self.bus = bus
        self._metrics = metrics
        self._timeout_s = timeout_s

    async def ask(
        self, subject: RequestSubject[RequestT, ReplyT], message: RequestT, *, timeout_s: float | None = None
    ) -> ReplyT:
        """The typed reply, or the typed error the region (or the bus) raised."""
        try:
            return await self.bus.request(subject, message, timeout=timeout_s or self._timeout_s)
        except MetalbusError as error:
            self._metrics.region_errors.labels(subject=subject.pattern, code=error.code.value).inc()
            raise


def region_client(request: Request) -> RegionClient:
    client: RegionClient = request.app.state.region
    return client


Region = Annotated[RegionClient, Depends(region_client)]
