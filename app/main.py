"""The FastAPI application: ``create_app(settings)`` assembles the routes, middleware and lifespan."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api import docs, health, metrics, models, page, predict, repository, tfserving
from app.api.errors import UNAUTHORIZED, add_exception_handlers
from app.body_budget import BodyBudget, BodyBudgetMiddleware
from app.config import Settings
from app.http.deps import create_key_checker, reject_repeated_query_parameters
from app.http.errors import drop_validation_responses
from app.inference.engine import create_engine
from app.lifespan import EngineLoader, create_lifespan
from app.metrics import Metrics
from app.middleware import RequestMiddleware
from app.security import ApiKeys
from app.state import AppState
from app.v2 import rest as v2_rest

DESCRIPTION = """Image classification with dynamic batching.

POST one or more images to `/predict` (multipart parts named `file`, or a raw image body) and
get the top-k classes with their probabilities for each image.
"""
# Relative, so the link also works behind a proxy that serves the app under a path.
PAGE_LINK = """
Or try it in the browser: [the demo page](./) (drop a photo, see the top-5 as bars).
"""


def create_app(settings: Settings, *, load_engine: EngineLoader = create_engine) -> FastAPI:
    """Build the app; the model is loaded and warmed up in the lifespan, before it serves."""
    body_budget = BodyBudget(settings.max_buffered_body_bytes)
    state = AppState(settings=settings, metrics=Metrics(), body_budget=body_budget)
    app = FastAPI(
        title="imgserve",
        description=DESCRIPTION + (PAGE_LINK if settings.demo_page else ""),
        version="0.1.0",
        lifespan=create_lifespan(state, load_engine),
        # app.api.docs serves them: /docs with local Swagger UI assets, all with their headers.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(reject_repeated_query_parameters)],
    )
    app.state.imgserve = state
    protected = _api_key_dependencies(settings)
    app.include_router(health.router)
    app.include_router(v2_rest.health_router)
    # tfserving before models: /v1/models/{name}:predict must not first match GET /v1/models/{name}
    # (an OPTIONS or GET there would be answered with the wrong Allow header).
    for router in (predict.router, tfserving.router, models.router, metrics.router, v2_rest.router):
        app.include_router(router, **_protected_route_options(protected))
    if settings.model_control == "explicit":
        app.include_router(repository.router, **_protected_route_options(protected))
    docs.add_docs(app, settings, protected)
    if settings.demo_page:
        page.add_page(app)
    drop_validation_responses(app, [v2_rest.health_router, v2_rest.router, tfserving.router])
    add_exception_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(BodyBudgetMiddleware, budget=body_budget)  # inside: the log sees its 503s
    app.add_middleware(RequestMiddleware, metrics=state.metrics, lifecycle=state.lifecycle)
    return app


def _api_key_dependencies(settings: Settings) -> list[Any]:
    return [Depends(create_key_checker(ApiKeys(settings.api_keys)))] if settings.auth_enabled else []


def _protected_route_options(protected: list[Any]) -> dict[str, Any]:
    return {"dependencies": protected, "responses": UNAUTHORIZED} if protected else {}
