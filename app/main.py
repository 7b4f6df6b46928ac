"""The FastAPI application: ``create_app(settings)`` and its lifespan."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.api import health, metrics, models, predict
from app.api.deps import UNAUTHORIZED
from app.config import Settings
from app.errors import ServiceError
from app.inference.batcher import BatcherConfig
from app.inference.engine import Engine, EngineOptions, create_engine
from app.inference.pipeline import Pipeline
from app.inference.preprocess import ImageLimits, configure_pillow
from app.metrics import Metrics
from app.middleware import RequestMiddleware
from app.security import create_key_checker
from app.state import AppState

logger = logging.getLogger(__name__)

# Swagger UI's JS/CSS, served from the swagger-ui-bundle-v2 wheel rather than FastAPI's default
# CDN (cdn.jsdelivr.net), so /docs works offline and behind egress filters. Always public:
# a browser's <script>/<link> requests carry no API key, and the files hold no secrets.
SWAGGER_UI_ASSETS = "/docs-assets"

EngineLoader = Callable[[Path, EngineOptions], Engine]

DESCRIPTION = """Image classification with dynamic batching.

POST one or more images to `/predict` (multipart parts named `file`, or a raw image body) and
get the top-k classes with their probabilities for each image.
"""


def create_app(settings: Settings, *, load_engine: EngineLoader = create_engine) -> FastAPI:
    """Build the app; the model is loaded and warmed up in the lifespan, before it serves."""
    state = AppState(settings=settings, metrics=Metrics())
    docs_open = settings.docs_public
    app = FastAPI(
        title="imgserve",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=_create_lifespan(state, load_engine),
        docs_url=None,  # served by _add_swagger_ui, with local Swagger UI assets
        redoc_url="/redoc" if docs_open else None,
        openapi_url="/openapi.json" if docs_open else None,
    )
    app.state.imgserve = state
    _add_routes(app, settings)
    _state_limits_in_openapi(app, settings)
    _add_exception_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestMiddleware, metrics=state.metrics, lifecycle=state.lifecycle)
    return app


def _add_routes(app: FastAPI, settings: Settings) -> None:
    protected: dict[str, Any] = {}
    if settings.auth_enabled:
        protected = {
            "dependencies": [Depends(create_key_checker(settings.api_keys))],
            "responses": UNAUTHORIZED,
        }
    app.include_router(health.router)
    for module in (predict, models, metrics):
        app.include_router(module.router, **protected)
    if settings.docs_public:
        _add_swagger_ui(app, [])
    elif settings.auth_enabled:
        _add_protected_docs(app, protected["dependencies"])


def _add_swagger_ui(app: FastAPI, dependencies: list[Any]) -> None:
    """/docs, with Swagger UI's files served by this app (see SWAGGER_UI_ASSETS)."""
    app.mount(SWAGGER_UI_ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{SWAGGER_UI_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI_ASSETS}/favicon-32x32.png",
        )


def _add_protected_docs(app: FastAPI, dependencies: list[Any]) -> None:
    """The docs behind the API key (docs_public=false with keys on)."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    _add_swagger_ui(app, dependencies)

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def _state_limits_in_openapi(app: FastAPI, settings: Settings) -> None:
    """The schema says how many files one request may carry (a setting, so known only here)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            predict_body = schema["paths"]["/predict"]["post"]["requestBody"]
            # FastAPI merges openapi_extra by reference: copy before changing it for this app.
            predict_body["content"] = copy.deepcopy(predict_body["content"])
            files = predict_body["content"]["multipart/form-data"]["schema"]["properties"]["file"]
            files["maxItems"] = settings.max_images_per_request
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_exception_handlers(app: FastAPI) -> None:
    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, ServiceError):  # registered for ServiceError only
            raise exc
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, RequestValidationError):  # registered for RequestValidationError only
            raise exc
        return JSONResponse({"detail": describe_validation_errors(exc)}, status_code=422)

    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's ServerErrorMiddleware re-raises after this, so the traceback is logged.
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected_error)


def describe_validation_errors(exc: RequestValidationError) -> str:
    """FastAPI's error list as one sentence: 'query parameter top_k: Input should be ... (got 'x')'."""
    parts = []
    for error in exc.errors():
        location = [str(item) for item in error.get("loc", ())]
        where = (
            f"{location[0]} parameter {'.'.join(location[1:])}" if len(location) > 1 else ".".join(location)
        )
        got = f" (got {error['input']!r})" if "input" in error and error["input"] is not None else ""
        parts.append(f"{where}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


def _create_lifespan(state: AppState, load_engine: EngineLoader) -> Callable[[FastAPI], Any]:
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(settings.max_image_pixels)
        engine = await asyncio.to_thread(
            load_engine,
            settings.model_path,
            EngineOptions(require_cuda=settings.require_cuda, intra_op_threads=settings.intra_op_threads),
        )
        timings = await asyncio.to_thread(engine.warm_up, settings.warmup_batch_sizes or [])
        logger.info(
            "model ready",
            extra={
                "model": engine.card.name,
                "model_version": engine.card.version,
                "execution_provider": engine.execution_provider,
                "warmup_ms": {size: round(s * 1000, 1) for size, s in timings.items()},
            },
        )
        pipeline = create_pipeline(engine, settings, state.metrics)
        pipeline.start()
        state.pipeline = pipeline
        state.metrics.model.info(
            {"name": engine.card.name, "version": engine.card.version, "provider": engine.execution_provider}
        )
        state.metrics.track_queue(
            lambda: pipeline.batcher.queued_images, lambda: pipeline.batcher.running_images
        )
        state.metrics.ready.set_function(
            lambda: float(state.lifecycle.ready and not state.lifecycle.draining)
        )
        state.lifecycle.ready = True
        try:
            yield
        finally:
            state.lifecycle.ready = False
            await pipeline.stop(timeout_s=max(0.5, state.lifecycle.seconds_left(settings.drain_timeout_s)))
            logger.info("pipeline stopped")

    return lifespan


def create_pipeline(engine: Engine, settings: Settings, metrics: Metrics) -> Pipeline:
    return Pipeline(
        engine,
        BatcherConfig(
            max_batch_size=settings.max_batch_size,
            max_delay_ms=settings.max_delay_ms,
            max_queue_images=settings.max_queue_images,
        ),
        ImageLimits(
            allowed_formats=frozenset(settings.allowed_formats), max_image_pixels=settings.max_image_pixels
        ),
        decode_threads=settings.decode_threads,
        observer=metrics,
    )
