"""Access control: optional API keys, docs visibility, CORS, and no request that makes the
server read a path, fetch a URL or load a model."""

from __future__ import annotations

import hmac
import socket
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from app import security
from harness.server import ServerProcess
from tests.conftest import StartServer

from . import corpus

KEY_A = "k-alpha-8b1f0c2e9d"
KEY_B = "k-bravo-5e7a3d91c4"
IMAGE = {"content": corpus.solid((250, 0, 0), size=(8, 8)), "headers": {"content-type": "image/png"}}
MISSING = "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


@pytest.fixture(scope="module")
def keyed_server(start_module_server: StartServer, tiny_model: Path) -> ServerProcess:
    return start_module_server(tiny_model, api_keys=f"{KEY_A},{KEY_B}")


def _predict(server: ServerProcess, headers: dict[str, str | bytes]) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/predict?top_k=1",
        content=IMAGE["content"],
        headers={**IMAGE["headers"], **headers},
    )


def _assert_401(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"] == "Bearer"


def test_keys_are_off_by_default(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    response = _predict(server, {})
    assert response.status_code == 200, response.text
    assert "securitySchemes" not in httpx.get(f"{server.base_url}/openapi.json").json().get("components", {})


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY_A}"}, {"Authorization": f"bearer {KEY_B}"}, {"X-API-Key": KEY_A}],
    ids=["bearer-a", "bearer-lowercase-scheme-b", "x-api-key-a"],
)
def test_a_valid_key_is_let_in(keyed_server: ServerProcess, headers: dict[str, str]) -> None:
    response = _predict(keyed_server, headers)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["top_k"][0]["label"] == "red"


def test_no_key_is_401_with_www_authenticate(keyed_server: ServerProcess) -> None:
    _assert_401(_predict(keyed_server, {}), MISSING)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {KEY_A[:-1]}"},  # a prefix
        {"Authorization": f"Bearer {KEY_A}x"},  # a suffix
        {"Authorization": f"Bearer {KEY_A.upper()}"},
        {"X-API-Key": f"{KEY_A},{KEY_B}"},
        {"X-API-Key": (KEY_A + "\u00e9").encode()},
    ],
    ids=["wrong", "prefix", "suffix", "case", "both-joined", "non-ascii"],
)
def test_a_wrong_key_is_401(keyed_server: ServerProcess, headers: dict[str, str | bytes]) -> None:
    _assert_401(_predict(keyed_server, headers), "invalid API key")


def test_basic_auth_with_a_key_as_password_is_not_a_key(keyed_server: ServerProcess) -> None:
    _assert_401(_predict(keyed_server, {"Authorization": f"Basic {KEY_A}"}), MISSING)


@pytest.mark.parametrize(("path", "body"), [("/healthz", {"status": "ok"}), ("/readyz", {"status": "ready"})])
def test_health_endpoints_need_no_key(keyed_server: ServerProcess, path: str, body: dict[str, str]) -> None:
    response = httpx.get(f"{keyed_server.base_url}{path}")
    assert (response.status_code, response.json()) == (200, body)


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/tiny", "/metrics"])
def test_models_and_metrics_need_a_key(keyed_server: ServerProcess, path: str) -> None:
    _assert_401(httpx.get(f"{keyed_server.base_url}{path}"), MISSING)
    assert httpx.get(f"{keyed_server.base_url}{path}", headers={"X-API-Key": KEY_B}).status_code == 200


def test_docs_are_public_by_default_and_declare_the_schemes(keyed_server: ServerProcess) -> None:
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(f"{keyed_server.base_url}{path}").status_code == 200, path
    schema = httpx.get(f"{keyed_server.base_url}/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert "401" in schema["paths"]["/predict"]["post"]["responses"]
    assert "401" not in schema["paths"]["/healthz"]["get"]["responses"]


def test_private_docs_need_a_key(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, api_keys=KEY_A, docs_public="false")
    for path in ("/docs", "/redoc", "/openapi.json"):
        _assert_401(httpx.get(f"{server.base_url}{path}"), MISSING)
        assert httpx.get(f"{server.base_url}{path}", headers={"X-API-Key": KEY_A}).status_code == 200, path


def test_keys_from_a_file(start_server: StartServer, tiny_model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# operators\n\n  {KEY_B}  \n# old: {KEY_A}\n")
    server = start_server(tiny_model, api_keys_file=keys)
    assert _predict(server, {"X-API-Key": KEY_B}).status_code == 200
    _assert_401(_predict(server, {"X-API-Key": KEY_A}), "invalid API key")  # commented out


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot be read"), ("# nothing\n\n", "holds no keys")],
    ids=["missing-file", "no-keys"],
)
def test_a_bad_keys_file_stops_the_server(
    start_server: StartServer, tiny_model: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    server = start_server(tiny_model, api_keys_file=keys, ready=False)
    proc = server.spawn()
    assert proc.wait(60) != 0
    assert message in server.log() and f"api_keys_file '{keys}'" in server.log(), server.log()


def test_keys_never_reach_the_logs(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model, api_keys=KEY_A, log_level="debug")
    _predict(server, {"Authorization": f"Bearer {KEY_A}"})
    _predict(server, {"X-API-Key": "guess-9f8e7d"})
    server.stop()
    log = server.log_path.read_text()
    assert "1 configured" in log  # the settings summary says how many, not which
    assert KEY_A not in log and "guess-9f8e7d" not in log


def test_key_comparison_is_constant_time_and_checks_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against each configured key, even after a match."""
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def recording_compare(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", recording_compare)
    keys = [KEY_A.encode(), KEY_B.encode(), b"k-third"]
    assert security.key_matches(KEY_A, keys) is True
    assert calls == [(KEY_A.encode(), k) for k in keys]
    assert security.key_matches("nope", keys) is False


# --- CORS -------------------------------------------------------------------------------


def _preflight(server: ServerProcess, origin: str) -> httpx.Response:
    return httpx.options(
        f"{server.base_url}/predict",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key",
        },
    )


def test_cors_is_off_unless_configured(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    preflight = _preflight(server, "https://evil.example")
    assert "access-control-allow-origin" not in preflight.headers
    assert preflight.status_code == 405, preflight.text
    simple = _predict(server, {"Origin": "https://evil.example"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers


def test_cors_allows_only_the_configured_origins(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(
        tiny_model, cors_origins="https://app.example,https://admin.example", api_keys=KEY_A
    )
    ok = _preflight(server, "https://app.example")
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-api-key" in ok.headers["access-control-allow-headers"].lower()
    bad = _preflight(server, "https://evil.example")
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    simple = _predict(server, {"Origin": "https://app.example", "X-API-Key": KEY_A})
    assert simple.headers["access-control-allow-origin"] == "https://app.example"
    assert "retry-after" in simple.headers["access-control-expose-headers"].lower()
    assert "access-control-allow-credentials" not in simple.headers


# --- no request reads a path, fetches a URL or loads a model ----------------------------


class Canary:
    """A TCP listener on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_no_request_makes_the_server_fetch_a_url_read_a_path_or_load_a_model(
    start_server: StartServer, tiny_model: Path, tmp_path: Path
) -> None:
    server = start_server(tiny_model)
    canary = Canary()
    url = f"http://127.0.0.1:{canary.port}/image.png"
    marker = tmp_path / f"written-{uuid.uuid4().hex}"
    base = server.base_url
    try:
        attempts = [
            httpx.post(
                f"{base}/predict", params={"url": url, "model": "/etc/passwd", "model_path": url}, **IMAGE
            ),
            httpx.post(f"{base}/predict", json={"url": url, "image_url": url, "path": "/etc/passwd"}),
            httpx.post(f"{base}/predict", data={"file": url}),
            httpx.post(
                f"{base}/predict", files={"file": (str(marker), corpus.solid((1, 2, 3)), "image/png")}
            ),
            httpx.post(f"{base}/predict", files={"file": ("x.svg", corpus.svg(), "image/svg+xml")}),
            httpx.post(f"{base}/predict", content=url.encode(), headers={"content-type": "text/uri-list"}),
            httpx.get(f"{base}/v1/models/..%2F..%2F..%2Fetc%2Fpasswd"),
            httpx.get(f"{base}/v1/models/{url}"),
            httpx.post(f"{base}/v1/models", json={"path": "/etc/passwd", "url": url}),
            httpx.put(f"{base}/v1/models/tiny", json={"model_path": str(tmp_path)}),
            httpx.get(f"{base}/static/../../etc/passwd"),
            httpx.get(f"{base}/docs", params={"url": url}),
        ]
    finally:
        canary.close()
    assert canary.hits == 0
    assert not marker.exists()
    statuses = [r.status_code for r in attempts]
    assert statuses == [200, 415, 415, 200, 422, 415, 404, 404, 405, 405, 404, 200], statuses
    for response in attempts:
        assert "root:x:0:0" not in response.text
    # The upload's filename is only echoed back, as data.
    assert attempts[3].json()["predictions"][0]["filename"] == str(marker)
    assert httpx.get(f"{base}/v1/models").json()["models"][0]["name"] == "tiny"


def test_the_schema_offers_no_way_to_name_a_path_url_or_model(
    start_server: StartServer, tiny_model: Path
) -> None:
    base_url = start_server(tiny_model).base_url
    schema = httpx.get(f"{base_url}/openapi.json").json()
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    v2_models = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    assert operations == {
        ("/predict", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{name}", "get"),
        ("/v1/models/{name}/predict", "post"),  # names pick among the served models only
        ("/v1/models/{name}/versions/{version}/predict", "post"),
        ("/metrics", "get"),
        # the v2 protocol and TF Serving's API: models by the name (and version) they are served as
        ("/v2", "get"),
        ("/v2/health/live", "get"),
        ("/v2/health/ready", "get"),
        *((f"{base}{tail}", method) for base in v2_models for tail, method in
          (("", "get"), ("/ready", "get"), ("/config", "get"), ("/stats", "get"), ("/infer", "post"))),
        ("/v2/models/stats", "get"),
        ("/v1/models/{name}:predict", "post"),
        ("/v1/models/{name}/versions/{version}:predict", "post"),
        ("/v1/models/{name}/versions/{version}", "get"),
    }  # fmt: skip
    params = {
        q["name"]
        for item in schema["paths"].values()
        for op in item.values()
        for q in op.get("parameters", [])
    }
    # Names and versions only look up the models already served (an unknown one is 404); no
    # parameter takes a path, a URL or a file.
    assert params == {
        "top_k",
        "name",
        "version",
        "probabilities",
        "explain",
        "Inference-Header-Content-Length",
    }
    for traversal in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "http:%2F%2F127.0.0.1:1%2Fm.onnx"):
        response = httpx.get(f"{base_url}/v2/models/{traversal}")
        assert response.status_code == 404, (traversal, response.text)


def test_a_markup_filename_is_reflected_only_inside_json(start_server: StartServer, tiny_model: Path) -> None:
    server = start_server(tiny_model)
    name = "<script>alert(1)</script>.png"
    response = httpx.post(
        f"{server.base_url}/predict", files={"file": (name, b"<b>not an image</b>", "image/png")}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "detail": f"file #1 {name!r}: not a decodable image (allowed formats: BMP, GIF, JPEG, PNG, WEBP)"
    }
