"""/docs, /redoc and /openapi.json: public, behind the API key, or off."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.config import Settings
from app.inference.errors import InferenceError, NotReadyError
from app.inference.model import MAX_TOP_K
from app.state import AppState

# Swagger UI's JS/CSS, served from the swagger-ui-bundle-v2 wheel rather than FastAPI's default
# CDN (cdn.jsdelivr.net), so /docs works offline and behind egress filters. Always public:
# a browser's <script>/<link> requests carry no API key, and the files hold no secrets.
SWAGGER_UI_ASSETS = "/docs-assets"


# The schema is data: nothing in it may run, and no page may frame it.
SCHEMA_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def add_docs(app: FastAPI, settings: Settings, protected: list[Any]) -> None:
    """Public docs, docs behind ``protected`` (the API-key dependency), or none."""
    if settings.docs_public:
        _add_docs(app, [])
    elif settings.auth_enabled:
        _add_docs(app, protected)
    _state_limits_in_openapi(app, settings)


def _add_docs(app: FastAPI, dependencies: list[Any]) -> None:
    """/openapi.json, /docs (Swagger UI, its files served by this app: see SWAGGER_UI_ASSETS)
    and /redoc, each behind ``dependencies``."""
    app.mount(SWAGGER_UI_ASSETS, StaticFiles(directory=swagger_ui_path), name="swagger-ui")
    swagger = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{SWAGGER_UI_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER_UI_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{SWAGGER_UI_ASSETS}/favicon-32x32.png",
    )
    swagger_headers = {
        "Content-Security-Policy": swagger_policy(bytes(swagger.body)),
        "X-Content-Type-Options": "nosniff",
    }

    @app.get("/openapi.json", include_in_schema=False, dependencies=dependencies)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi(), headers=SCHEMA_HEADERS)

    @app.get("/docs", include_in_schema=False, dependencies=dependencies)
    async def docs() -> HTMLResponse:
        return HTMLResponse(swagger.body, headers=swagger_headers)

    @app.get("/redoc", include_in_schema=False, dependencies=dependencies)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")


def swagger_policy(page: bytes) -> str:
    """Swagger UI's page: scripts and styles from this app only, and its one inline script
    (the set-up call) allowed by its hash; requests to this app only; no framing."""
    inline = re.findall(rb"<script>(.*?)</script>", page, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'" for script in inline
    )
    return (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def _state_limits_in_openapi(app: FastAPI, settings: Settings) -> None:
    """The schema says what the settings and the served models allow, so that it matches what
    the server accepts: how many files one request may carry, and ``top_k``'s maximum (the
    model's classes, at most ``MAX_TOP_K``). The models can change while the server runs (a
    swap), so the schema is rebuilt when the served models' class counts change."""
    generate = app.openapi
    built: dict[object, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            predict_body = schema["paths"]["/predict"]["post"]["requestBody"]
            # FastAPI merges openapi_extra by reference: copy before changing it for this app.
            predict_body["content"] = copy.deepcopy(predict_body["content"])
            files = predict_body["content"]["multipart/form-data"]["schema"]["properties"]["file"]
            files["maxItems"] = settings.max_images_per_request
            _image_count_limits(schema, settings.max_images_per_request)
            _headers_never_null(schema)
            app.openapi_schema = schema
        maxima = _top_k_maxima(app)
        if maxima not in built:
            built.clear()
            built[maxima] = _with_top_k_maxima(app.openapi_schema, *maxima)
        return built[maxima]

    app.openapi = openapi  # type: ignore[method-assign]


def _top_k_maxima(app: FastAPI) -> tuple[int, int]:
    """(top_k's maximum on /predict: the default model's; on the named-model routes: the largest)."""
    state: AppState = app.state.imgserve
    try:
        models = state.served_models()
    except NotReadyError:
        return MAX_TOP_K, MAX_TOP_K
    largest = max((model.max_top_k for model in models), default=MAX_TOP_K)
    try:
        default = state.get_model().max_top_k
    except InferenceError:  # several models and no default: /predict answers 404
        default = largest
    return default, largest


def _with_top_k_maxima(schema: dict[str, Any], default: int, largest: int) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and parameter["name"] == "top_k":
                    bounds = parameter["schema"].get("anyOf", [parameter["schema"]])
                    for bound in bounds:
                        if bound.get("type") == "integer":
                            bound["maximum"] = default if path == "/predict" else largest
    return schema


def _headers_never_null(schema: dict[str, Any]) -> None:
    """An optional header is absent or has a value: drop the ``null`` that FastAPI writes for
    ``int | None`` (a client cannot send a null header; ``Inference-Header-Content-Length: null``
    is text that is not a number, a 400)."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                any_of = parameter["schema"].get("anyOf") if parameter["in"] == "header" else None
                if any_of is not None:
                    kept = [branch for branch in any_of if branch.get("type") != "null"]
                    if len(kept) == 1:
                        del parameter["schema"]["anyOf"]
                        parameter["schema"].update(kept[0])


def _image_count_limits(schema: dict[str, Any], max_images: int) -> None:
    """The most images one request may carry, where the v2 and TF Serving bodies count them:
    a v2 input's first dimension, TF Serving's instances and columns."""
    for path, operations in schema["paths"].items():
        body = operations.get("post", {}).get("requestBody")
        if body is None or "application/json" not in body["content"]:
            continue
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            body["content"] = copy.deepcopy(body["content"])  # shared with other apps (openapi_extra)
            inputs = body["content"]["application/json"]["schema"]["properties"]["inputs"]
            for tensor in inputs["items"]["oneOf"]:
                tensor["properties"]["shape"]["prefixItems"][0]["maximum"] = max_images
        elif path.startswith("/v1/models/") and path.endswith(":predict"):
            body["content"] = copy.deepcopy(body["content"])
            properties = body["content"]["application/json"]["schema"]["properties"]
            properties["instances"]["maxItems"] = max_images
            columns = properties["inputs"]["oneOf"]
            columns[0]["maxItems"] = max_images
            columns[2]["additionalProperties"]["maxItems"] = max_images
