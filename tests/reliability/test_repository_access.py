"""The model repository's surface gives no way to name a path: model names pick among the
served models or the repository's own folders, and a load never takes files from the request."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.app.repository_models import write_version

from .conftest import StartServer


def test_names_in_paths_cannot_leave_the_repository(start_server: StartServer, tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_version(repository, "colours", 1)
    outside = tmp_path / "outside"
    write_version(outside, "secret", 1)  # a valid model next to the repository, never loadable
    v1 = repository / "colours" / "1" / "model.onnx"
    server = start_server(v1, model_repository=repository, model_control="explicit")
    base = server.base_url
    attempts = {
        "load ../outside/secret": httpx.post(f"{base}/v2/repository/models/..%2Foutside%2Fsecret/load"),
        "load ..": httpx.post(f"{base}/v2/repository/models/../load"),
        "load absolute": httpx.post(f"{base}/v2/repository/models/%2Fetc/load"),
        "load with files": httpx.post(
            f"{base}/v2/repository/models/colours/load",
            json={"parameters": {"config": "{}", "file:1/model.onnx": "AAAA"}},
        ),
        "predict ../outside": httpx.post(f"{base}/v1/models/..%2Foutside%2Fsecret/predict", content=b"x"),
    }
    assert {name: r.status_code for name, r in attempts.items()} == {
        "load ../outside/secret": 404,  # the decoded path has more segments: no route
        "load ..": 404,
        "load absolute": 404,
        "load with files": 400,
        "predict ../outside": 404,
    }
    files_refused = "parameters.file:1/model.onnx: Extra inputs are not permitted (got 'AAAA')"
    assert attempts["load with files"].json() == {"error": f"invalid load request: {files_refused}"}
    response = httpx.post(f"{base}/v2/repository/models/outside/load")
    not_there = f"no model 'outside' in model repository '{repository}'; models there: ['colours']"
    assert (response.status_code, response.json()) == (
        400,
        {"error": f"failed to load 'outside': {not_there}"},
    )
    assert httpx.post(f"{base}/v2/repository/index").json() == [
        {"name": "colours", "version": "1", "state": "READY", "reason": ""}
    ]
