"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import NOT_READY, StateDep
from app.inference.errors import NotReadyError
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses=NOT_READY)
async def readyz(state: StateDep) -> HealthResponse:
    """The model is loaded and warmed up and the server is not draining; 503 otherwise."""
    if state.lifecycle.draining:
        raise NotReadyError("not ready: draining, the server is shutting down")
    if not state.lifecycle.ready:
        raise NotReadyError("not ready: the model is loading")
    return HealthResponse(status="ready")
