"""Liveness and readiness probes (never behind an API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import NOT_READY, StateDep
from app.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is alive and its event loop answers."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, responses=NOT_READY)
async def readyz(state: StateDep) -> HealthResponse:
    """The models are loaded and warmed up (the default one has a version) and the server is not
    draining; 503 otherwise."""
    state.check_ready()
    return HealthResponse(status="ready")


# HEAD, as a load balancer's or uptime checker's cheap probe: the GET's status and headers, no
# body. FastAPI gives each method its own operation (one route with both would share an id).
@router.head("/healthz", response_class=Response, responses={200: {"description": "Alive; no body."}})
async def healthz_head() -> Response:
    """The process is alive (HEAD: no body)."""
    return Response()


@router.head(
    "/readyz",
    response_class=Response,
    responses={200: {"description": "Ready; no body."}, 503: {"description": "Not ready; no body."}},
)
async def readyz_head(state: StateDep) -> Response:
    """Ready (HEAD: no body); 503 otherwise."""
    state.check_ready()
    return Response()
