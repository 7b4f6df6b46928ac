"""The OpenAPI schema tells the truth: schemathesis (all checks) against the live server finds
no server error and no response that contradicts the schema, and every status the API gives
is declared. This is the bounded CI run; reliability/fuzz_api.sh is the full one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.server import REPO_ROOT, ServerProcess
from tests.conftest import StartServer

from . import corpus
from .conftest import LIMITS
from .helpers import raw_request

CONFIG = REPO_ROOT / "reliability" / "schemathesis.toml"
KEY = "k-schema-2f9c41d7"


def schemathesis_run(
    base_url: str, report_dir: Path, *extra: str, max_examples: int = 25
) -> tuple[int, int, str]:
    """Run the schemathesis CLI; return (exit code, cases generated, output)."""
    pytest.importorskip("schemathesis", reason="pip install schemathesis (the dev extra)")
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [
        cli, "--config-file", str(CONFIG), "run", f"{base_url}/openapi.json", "--checks", "all",
        "--max-examples", str(max_examples), "--seed", "1", "--workers", "1", "--no-color",
        "--report", "junit", "--report-dir", str(report_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=report_dir)
    match = re.search(r"(\d+) generated", proc.stdout)
    return proc.returncode, int(match.group(1)) if match else 0, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("auth", [False, True], ids=["open", "api-keys"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    start_server: StartServer, tiny_model: Path, tmp_path: Path, auth: bool
) -> None:
    # The cost budgets as reliability/fuzz_api.py sets them, so that generated requests reach them.
    settings: dict[str, Any] = {
        **LIMITS,
        "max_image_pixels": 4_000_000,
        "max_request_pixels": 8_000_000,
        "max_decoding_pixels": 16_000_000,
        "max_buffered_body_bytes": 4_000_000,
    }
    extra: tuple[str, ...] = ()
    if auth:
        settings["api_keys"] = KEY
        extra = ("--header", f"Authorization: Bearer {KEY}")
    server = start_server(tiny_model, **settings)
    code, cases, output = schemathesis_run(server.base_url, tmp_path, *extra)
    print(f"\nschemathesis ({'API keys' if auth else 'open'}): {cases} cases, exit {code}")
    assert code == 0, output[-6000:]
    assert cases >= 200, output[-3000:]
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200


@pytest.fixture(scope="module")
def schema(limited_server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{limited_server.base_url}/openapi.json").json()  # type: ignore[no-any-return]


def _declared(schema: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(s) for s in schema["paths"][path][method]["responses"]}


def test_predict_declares_every_status_it_gives(
    limited_server: ServerProcess, schema: dict[str, Any]
) -> None:
    """Provoke each error /predict gives under this configuration and find it in the schema."""
    base = limited_server.base_url
    png = corpus.solid((1, 2, 3))
    seen = {
        httpx.post(f"{base}/predict", content=png, headers={"content-type": "image/png"}).status_code,
        httpx.post(
            f"{base}/predict", content=b"x", headers={"content-type": "multipart/form-data"}
        ).status_code,
        httpx.post(f"{base}/predict", content=png, headers={"content-type": "text/plain"}).status_code,
        httpx.post(f"{base}/predict", files={"file": ("a", corpus.bomb_png(), "image/png")}).status_code,
        httpx.post(f"{base}/predict", files={"file": ("a", b"nope", "image/png")}).status_code,
        httpx.post(
            f"{base}/predict", params={"top_k": 0}, content=png, headers={"content-type": "image/png"}
        ).status_code,
        raw_request(limited_server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc")[0],
    }
    assert seen == {200, 400, 413, 415, 422}, seen
    declared = _declared(schema, "/predict", "post")
    assert seen <= declared, seen - declared
    # Statuses provoked elsewhere: 503 (tests/reliability/test_overload.py), 504 (a stalled upload,
    # test_hostile_inputs.py), 401 (test_access_control.py, declared only when keys are on).
    assert {503, 504} <= declared


def test_predict_declares_the_500_of_a_failed_batch(schema: dict[str, Any]) -> None:
    """A model error fails its batch with 500 {"detail": "inference failed on a batch of N images"}
    (test_faults.py): a deliberate, typed response, so the schema should say so."""
    assert 500 in _declared(schema, "/predict", "post")


def test_error_responses_use_the_one_error_body_and_503_declares_retry_after(schema: dict[str, Any]) -> None:
    responses = schema["paths"]["/predict"]["post"]["responses"]
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            assert response["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"
            }
    assert "Retry-After" in responses["503"]["headers"]
    assert schema["components"]["schemas"]["ErrorResponse"]["required"] == ["detail"]


def test_multipart_schema_states_how_many_files_are_accepted(schema: dict[str, Any]) -> None:
    """An empty 'file' array matches an array schema without minItems, yet the server answers
    it 422 ("no images"): the schema must say 1..max_images_per_request."""
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    files = body["properties"]["file"]
    assert files.get("minItems") == 1, files
    assert files.get("maxItems") == LIMITS["max_images_per_request"], files
