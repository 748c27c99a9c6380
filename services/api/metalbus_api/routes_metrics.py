"""GET /metrics: the api's Prometheus metrics in the text format; like every route but health, it needs a key."""

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from metalbus_api.auth import require_api_key
from metalbus_api.metrics import ApiMetrics
from metalbus_api.openapi_responses import error_responses

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_api_key)])

PROMETHEUS_TEXT = CONTENT_TYPE_LATEST.split(";")[0]


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}},
        **error_responses(),
    },
)
async def get_metrics(request: Request) -> Response:
    """Requests by route and status, their latency, region errors by code, open event streams."""
    metrics: ApiMetrics = request.app.state.metrics
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)
