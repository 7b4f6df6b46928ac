"""/docs, /redoc and /openapi.json: public, behind the API key, or off."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.config import Settings

# Swagger UI's JS/CSS, served from the swagger-ui-bundle-v2 wheel rather than FastAPI's default
# CDN (cdn.jsdelivr.net), so /docs works offline and behind egress filters. Always public:
# a browser's <script>/<link> requests carry no API key, and the files hold no secrets.
SWAGGER_UI_ASSETS = "/docs-assets"


def add_docs(app: FastAPI, settings: Settings, protected: list[Any]) -> None:
    """Public docs, docs behind ``protected`` (the API-key dependency), or none."""
    if settings.docs_public:
        _add_swagger_ui(app, [])
    elif settings.auth_enabled:
        _add_protected_docs(app, protected)
    _state_limits_in_openapi(app, settings)


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
