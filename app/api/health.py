"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import NOT_READY, get_state
from app.errors import UnavailableError
from app.schemas import HealthResponse
from app.state import AppState

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses=NOT_READY)
async def readyz(state: Annotated[AppState, Depends(get_state)]) -> HealthResponse:
    """The model is loaded and warmed up and the server is not draining; 503 otherwise."""
    if state.lifecycle.draining:
        raise UnavailableError("not ready: draining, the server is shutting down")
    if not state.lifecycle.ready:
        raise UnavailableError("not ready: the model is loading")
    return HealthResponse(status="ready")
