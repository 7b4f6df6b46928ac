"""API keys, CORS, docs exposure, and an OpenAPI schema that tells the truth."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image

from app.security import key_matches

KEYS = "alpha-key-123,beta-key-456"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()


def unauthorized(response: Any, detail: str) -> None:
    assert (response.status_code, response.json()) == (401, {"detail": detail})
    assert response.headers["www-authenticate"] == "Bearer"


def test_keys_are_compared_against_all_keys() -> None:
    keys = [b"alpha", b"beta"]
    assert key_matches("beta", keys) and key_matches("alpha", keys)
    assert not key_matches("gamma", keys) and not key_matches("alph", keys) and not key_matches("", keys)


def test_with_keys_on_predict_models_and_metrics_need_a_key(make_client: Callable[..., Any]) -> None:
    with make_client(api_keys=KEYS) as client:
        for method, path in (("POST", "/predict"), ("GET", "/v1/models"), ("GET", "/metrics")):
            unauthorized(
                client.request(method, path),
                "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            )
            unauthorized(client.request(method, path, headers={"X-API-Key": "wrong"}), "invalid API key")
            unauthorized(
                client.request(method, path, headers={"Authorization": "Bearer wrong"}), "invalid API key"
            )
        raw = {"Content-Type": "image/png"}
        assert (
            client.post(
                "/predict", content=png(), headers={**raw, "Authorization": "Bearer beta-key-456"}
            ).status_code
            == 200
        )
        assert (
            client.post("/predict", content=png(), headers={**raw, "X-API-Key": "alpha-key-123"}).status_code
            == 200
        )
        assert client.get("/metrics", headers={"X-API-Key": "alpha-key-123"}).status_code == 200


def test_a_bad_key_is_401_before_the_body_or_parameters_are_looked_at(
    make_client: Callable[..., Any],
) -> None:
    with make_client(api_keys=KEYS) as client:
        unauthorized(
            client.post("/predict?top_k=0", content=b"x", headers={"Content-Type": "text/plain"}),
            "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
        )


def test_probes_are_exempt_and_docs_follow_docs_public(make_client: Callable[..., Any]) -> None:
    with make_client(api_keys=KEYS) as client:
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/docs").status_code == 200 and client.get("/openapi.json").status_code == 200
    with make_client(api_keys=KEYS, docs_public=False) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            unauthorized(
                client.get(path), "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
            assert client.get(path, headers={"X-API-Key": "alpha-key-123"}).status_code == 200
    with make_client(docs_public=False) as client:
        assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]


def test_cors_is_off_by_default_and_on_for_listed_origins(make_client: Callable[..., Any]) -> None:
    preflight = {"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"}
    with make_client() as client:
        response = client.options("/predict", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with make_client(cors_origins="https://ui.example") as client:
        response = client.options("/predict", headers=preflight)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "https://ui.example"
        other = client.options("/predict", headers={**preflight, "Origin": "https://evil.example"})
        assert other.status_code == 400


def test_openapi_describes_both_bodies_and_every_error(make_client: Callable[..., Any]) -> None:
    with make_client() as client:
        schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/predict"]["post"]
    content = operation["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["file"] == {
        "type": "array",
        "minItems": 1,
        "maxItems": 32,
        "items": {
            "type": "string",
            "format": "binary",
            "minLength": 1,
            "contentMediaType": "application/octet-stream",
        },
        "description": "Images (JPEG, PNG, WebP, BMP or GIF), one per part.",
    }
    assert content["multipart/form-data"]["schema"]["additionalProperties"] is False
    for media_type in (
        "image/jpeg",
        "image/png",
        "image/webp",
        "image/bmp",
        "image/gif",
        "application/octet-stream",
    ):
        assert content[media_type]["schema"]["format"] == "binary"
    assert operation["parameters"][0]["name"] == "top_k"
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in ("400", "413", "415", "422", "500", "503", "504"):
        assert operation["responses"][status]["content"]["application/json"]["schema"] == error_ref, status
    assert "Retry-After" in operation["responses"]["503"]["headers"]
    assert "401" not in operation["responses"] and "security" not in operation
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictResponse"
    }
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]
    assert "503" in schema["paths"]["/readyz"]["get"]["responses"]


def test_openapi_states_max_images_per_request_of_each_app(make_client: Callable[..., Any]) -> None:
    def max_items(client: TestClient) -> int:
        body = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]
        return int(body["content"]["multipart/form-data"]["schema"]["properties"]["file"]["maxItems"])

    with make_client(max_images_per_request=3) as three, make_client(max_images_per_request=7) as seven:
        assert (max_items(three), max_items(seven)) == (3, 7)


def test_openapi_declares_401_and_both_key_schemes_when_keys_are_on(make_client: Callable[..., Any]) -> None:
    with make_client(api_keys=KEYS) as client:
        schema = client.get("/openapi.json").json()
    for path, method in (("/predict", "post"), ("/v1/models", "get"), ("/metrics", "get")):
        operation = schema["paths"][path][method]
        assert "401" in operation["responses"], path
        assert operation["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/readyz"]["get"]
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}


def test_docs_page_uploads_files(make_client: Callable[..., Any]) -> None:
    with make_client() as client:
        html = client.get("/docs").text
        assert "swagger-ui" in html and "/openapi.json" in html
        # Swagger UI's files come from this app, not a CDN: /docs works offline.
        assert "https://" not in html and "http://" not in html
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f'"/docs-assets/{asset}"' in html
            assert client.get(f"/docs-assets/{asset}").status_code == 200
        # What Swagger UI's "Try it out" sends: multipart parts named file.
        response = client.post("/predict", files=[("file", ("x.png", png(), "image/png"))])
        assert response.status_code == 200
