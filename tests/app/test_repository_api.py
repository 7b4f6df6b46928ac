"""The repository's REST surface in process: Triton's index/load/unload, the named and pinned
predict routes, /v1/models with every version's state, readiness. Status and whole body."""

from __future__ import annotations

import gc
import io
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.main import create_app
from harness.tiny_model import expected_probabilities

from .repository_models import truncate, version_labels, write_version

RED = (200, 30, 30)


def png(colour: tuple[int, int, int] = RED) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def prediction(name: str, version: int, k: int = 1) -> dict[str, Any]:
    """The whole body for one red PNG classified by ``name`` version ``version``."""
    probabilities = expected_probabilities(np.array(RED, dtype=np.float64) / 255)
    order = np.argsort(-probabilities, kind="stable")[:k]
    labels = version_labels(version)
    return {
        "model": name,
        "model_version": str(version),
        "predictions": [
            {
                "filename": None,
                "top_k": [
                    {
                        "index": int(i),
                        "label": labels[i],
                        "probability": pytest.approx(float(probabilities[i]), rel=1e-4),
                    }
                    for i in order
                ],
            }
        ],
    }


def entry(name: str, version: str | None, state: str, reason: str = "") -> dict[str, str]:
    found = {"name": name, "state": state, "reason": reason}
    return found | ({"version": version} if version is not None else {})


@pytest.fixture
def make_client(tmp_path: Path) -> Callable[..., Any]:
    @contextmanager
    def make(**overrides: Any) -> Iterator[TestClient]:
        settings = Settings(
            model_repository=tmp_path,
            decode_threads=1,
            intra_op_threads=1,
            warmup_batch_sizes="1",
            **overrides,
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client

    return make


def predict(client: TestClient, path: str = "/predict", query: str = "?top_k=1") -> Any:
    return client.post(path + query, content=png(), headers={"Content-Type": "image/png"})


def test_the_repository_api_is_off_unless_explicit(tmp_path: Path, make_client: Callable[..., Any]) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client() as client:
        for path in ("/v2/repository/index", "/v2/repository/models/colours/load"):
            response = client.post(path)
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
        assert "/v2/repository/index" not in client.get("/openapi.json").json()["paths"]


def test_load_swaps_in_a_new_version_and_the_index_says_so(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit") as client:
        assert client.post("/v2/repository/index").json() == [entry("colours", "1", "READY")]
        assert (r := predict(client)).status_code == 200 and r.json() == prediction("colours", 1)
        write_version(tmp_path, "colours", 2)
        response = client.post("/v2/repository/models/colours/load")
        assert (response.status_code, response.content) == (200, b"")
        for path in ("/predict", "/v1/models/colours/predict", "/v1/models/colours/versions/2/predict"):
            assert (r := predict(client, path)).status_code == 200 and r.json() == prediction("colours", 2), (
                path
            )
        assert client.post("/v2/repository/index", json={}).json() == [
            entry("colours", "1", "UNAVAILABLE", "unloaded"),
            entry("colours", "2", "READY"),
        ]
        assert client.post("/v2/repository/index", json={"ready": True}).json() == [
            entry("colours", "2", "READY")
        ]
        response = predict(client, "/v1/models/colours/versions/1/predict")
        assert (response.status_code, response.json()) == (
            404,
            {"detail": "model 'colours' has no version '1' (UNAVAILABLE: unloaded); served versions: ['2']"},
        )


def test_a_failed_load_is_400_with_the_reason_and_the_served_version_stays(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "colours", 2)
    with make_client(model_control="explicit") as client:
        bad = truncate(write_version(tmp_path, "colours", 3)) or tmp_path / "colours" / "3" / "model.onnx"
        response = client.post("/v2/repository/models/colours/load")
        assert response.status_code == 400
        (message,) = response.json().values()
        assert message.startswith(
            f"failed to load 'colours': cannot load model 'colours' version 3 ({bad}): "
            f"ONNX Runtime cannot load '{bad}': "
        ), message
        (v2, v3) = client.post("/v2/repository/index").json()
        assert v2 == entry("colours", "2", "READY")
        assert v3 == entry("colours", "3", "UNAVAILABLE", message.removeprefix("failed to load 'colours': "))
        assert (r := predict(client)).status_code == 200 and r.json() == prediction("colours", 2)
        assert client.get("/readyz").status_code == 200
        assert client.get("/v1/models").json()["versions"] == [
            {"name": "colours", "version": "2", "state": "READY", "reason": ""},
            {"name": "colours", "version": "3", "state": "UNAVAILABLE", "reason": v3["reason"]},
        ]


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        (
            "/v2/repository/index",
            b"{",
            "the request body is not JSON: Expecting property name enclosed in double quotes: "
            "line 1 column 2 (char 1)",
        ),
        (
            "/v2/repository/index",
            b'{"ready": "maybe"}',
            "invalid index request: ready: Input should be a valid boolean, "
            "unable to interpret input (got 'maybe')",
        ),
        (
            "/v2/repository/models/colours/load",
            b'{"parameters": {"file:1/model.onnx": "AAAA"}}',
            "invalid load request: parameters.file:1/model.onnx: Extra inputs are not permitted (got 'AAAA')",
        ),
        (
            "/v2/repository/models/colours/load",
            b'{"parameters": {"config": "{\\"max_batch_size\\": 4}"}}',
            "the config parameter of the load of 'colours': only 'version_policy' can be set here, "
            "got ['max_batch_size']",
        ),
        (
            "/v2/repository/models/zebra/load",
            b"",
            "failed to load 'zebra': no model 'zebra' in model repository '{root}'; "
            "models there: ['colours']",
        ),
        (
            "/v2/repository/models/zebra/unload",
            b"",
            "failed to unload 'zebra': no model 'zebra' in model repository '{root}'",
        ),
        (
            "/v2/repository/models/colours/unload",
            b'{"parameters": {"unload_dependents": "yes please"}}',
            "invalid unload request: parameters.unload_dependents: Input should be a valid boolean, "
            "unable to interpret input (got 'yes please')",
        ),
        ("/v2/repository/index", b"[" * 70_000, "the request body exceeds 65536 bytes"),
    ],
)
def test_bad_requests_are_400_in_tritons_error_shape(
    tmp_path: Path, make_client: Callable[..., Any], path: str, body: bytes, error: str
) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit") as client:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert (response.status_code, response.json()) == (400, {"error": error.format(root=tmp_path)})
        assert client.post("/v2/repository/index").json() == [entry("colours", "1", "READY")]


def test_unload_makes_the_default_model_unready_and_load_brings_it_back(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit") as client:
        assert (
            client.post(
                "/v2/repository/models/colours/unload", json={"parameters": {"unload_dependents": True}}
            ).status_code
            == 200
        )
        not_ready = {"detail": "not ready: the default model 'colours' has no version loaded (unloaded)"}
        for response in (client.get("/readyz"), predict(client)):
            assert (response.status_code, response.json(), response.headers["retry-after"]) == (
                503,
                not_ready,
                "1",
            )
        response = predict(client, "/v1/models/colours/predict")
        assert (response.status_code, response.json()) == (
            404,
            {"detail": "model 'colours' is not loaded (unloaded)"},
        )
        assert client.post("/v2/repository/index").json() == [
            entry("colours", "1", "UNAVAILABLE", "unloaded")
        ]
        assert client.post("/v2/repository/models/colours/unload").status_code == 200  # already: fine
        assert client.post("/v2/repository/models/colours/load").status_code == 200
        assert client.get("/readyz").json() == {"status": "ready"}
        assert predict(client).json() == prediction("colours", 1)


def test_a_load_config_pins_versions_and_predict_routes_pick_them(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    for version in (1, 2):
        write_version(tmp_path, "colours", version)
    with make_client(model_control="explicit") as client:
        config = '{"version_policy": {"specific": {"versions": [1, 2]}}}'
        assert (
            client.post(
                "/v2/repository/models/colours/load", json={"parameters": {"config": config}}
            ).status_code
            == 200
        )
        assert predict(client).json() == prediction("colours", 2)
        assert predict(client, "/v1/models/colours/versions/1/predict", "?top_k=2").json() == prediction(
            "colours", 1, k=2
        )
        listing = client.get("/v1/models").json()
        assert [(m["name"], m["version"], m["labels"]) for m in listing["models"]] == [
            ("colours", "1", version_labels(1)),
            ("colours", "2", version_labels(2)),
        ]
        assert listing["default_model"] == "colours"
        response = predict(client, "/v1/models/colours/versions/1/predict", "?top_k=9")
        assert (response.status_code, response.json()) == (
            422,
            {"detail": "top_k must be between 1 and 4 (the number of classes), got 9"},
        )


def test_several_models_without_a_default_must_be_named(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "a", 1)
    write_version(tmp_path, "b", 3)
    with make_client() as client:
        assert client.get("/readyz").status_code == 200
        response = predict(client)
        assert (response.status_code, response.json()) == (
            404,
            {"detail": "no default model: this server serves 'a', 'b'; name the model in the request"},
        )
        assert predict(client, "/v1/models/b/predict").json() == prediction("b", 3)
        assert client.get("/v1/models").json()["default_model"] is None
    with make_client(default_model="b") as client:
        assert predict(client).json() == prediction("b", 3)


def test_the_repository_api_needs_the_api_key_when_keys_are_set(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit", api_keys="k1") as client:
        response = client.post("/v2/repository/models/colours/unload")
        assert (response.status_code, response.json()) == (
            401,
            {"detail": "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"},
        )
        assert client.post("/v2/repository/index", headers={"X-API-Key": "k1"}).json() == [
            entry("colours", "1", "READY")
        ]


def test_metrics_are_labelled_by_model_version_and_dropped_on_unload(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit") as client:
        predict(client)
        text = client.get("/metrics").text
        for line in (
            'imgserve_model_batch_size_count{model="colours",version="1"} 1.0',
            'imgserve_model_inference_duration_seconds_count{model="colours",version="1"} 1.0',
            'imgserve_model_queue_images{model="colours",version="1"} 0.0',
            'imgserve_model_requests_in_flight{model="colours",version="1"} 0.0',
            'imgserve_model_info{name="colours",precision="fp32",'
            'provider="CPUExecutionProvider",version="1"} 1.0',
            "imgserve_batch_size_count 1.0",
        ):
            assert line in text, line
        write_version(tmp_path, "colours", 2)
        client.post("/v2/repository/models/colours/load")
        predict(client)
        text = client.get("/metrics").text
        assert 'version="1"' not in text  # only served versions have series
        assert (
            'imgserve_model_batch_size_count{model="colours",version="2"} 1.0' in text
        )  # warm-ups not counted
        assert "imgserve_batch_size_count 2.0" in text


def test_start_up_is_frozen_out_of_collections_and_a_version_loaded_then_is_freed_on_unload(
    tmp_path: Path, make_client: Callable[..., Any]
) -> None:
    """The lifespan freezes what start-up built (``gc.freeze``: no full collection walks it again
    while serving); version 1, loaded then, sits in reference cycles that only the collector
    frees, so the swap's collection must see the frozen objects too."""
    write_version(tmp_path, "colours", 1)
    with make_client(model_control="explicit") as client:
        assert gc.get_freeze_count() > 0
        v1 = client.app.state.imgserve.registry.resolve("colours")
        session = weakref.ref(v1.engine.session)
        del v1
        write_version(tmp_path, "colours", 2)
        assert client.post("/v2/repository/models/colours/load").status_code == 200
        assert session() is None  # freed by the server's own collection, not by this test's
        v2 = weakref.ref(client.app.state.imgserve.registry.resolve("colours").engine.session)
        assert client.post("/v2/repository/models/colours/unload").status_code == 200
        assert v2() is None
    assert gc.get_freeze_count() == 0  # shut down: nothing left frozen in the process
