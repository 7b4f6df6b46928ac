"""Prometheus scrape endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import get_state
from app.state import AppState

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(state: Annotated[AppState, Depends(get_state)]) -> Response:
    """Prometheus text format: requests, latency, queue depth, batch sizes, inference time."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
