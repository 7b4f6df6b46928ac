"""Triton's own clients over a real server: the example image client, unmodified, classifying
real photos over HTTP and gRPC, and each of Triton's extension calls (model config,
statistics, repository index, load and unload) through tritonclient's HTTP and gRPC clients.

One server serves a model repository with explicit model control: the default model
(EfficientNet-Lite0, ImageNet) with ``IMGSERVE_V2_INPUT=pixels`` (the tensor the image client
sends), and a tiny model to load and unload. A second, tiny one has API keys and no model
control.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from google.protobuf import json_format
from PIL import Image

from harness.server import ServerProcess, free_port, settings_env
from tests.app.photos import PHOTOS
from tests.app.repository_models import write_version
from tests.v2.conftest import DEFAULT, V2Server

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

IMAGE_CLIENT = Path(__file__).parent / "triton_client" / "image_client.py"
CATS = {"tabby", "tiger cat", "Egyptian cat"}
TINY = "colours"
KEY = "triton-test-key"


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@pytest.fixture(scope="module")
def repository_server(
    default_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[V2Server]:
    repository = tmp_path_factory.mktemp("repository")
    version = repository / DEFAULT / "1"
    version.mkdir(parents=True)
    for name in ("model.onnx", "model.json"):
        link_or_copy(default_model_path.parent / name, version / name)
    write_version(repository, TINY, 1)
    write_version(repository, TINY, 2)
    grpc_port = free_port()
    env = settings_env(
        default_model_path,
        {
            "model_repository": repository,
            "model_control": "explicit",
            "v2_input": "pixels",
            "grpc_port": grpc_port,
            "warmup_batch_sizes": 1,
        },
    )
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(env, log, inherit_settings=False) as process:
        yield V2Server(process, grpc_port)


@pytest.fixture(scope="module")
def keyed_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[V2Server]:
    grpc_port = free_port()
    settings = {"api_keys": KEY, "grpc_port": grpc_port, "warmup_batch_sizes": 1, "model_control": "explicit"}
    env = settings_env(tiny_model_path, settings)
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with ServerProcess(env, log, inherit_settings=False) as process:
        yield V2Server(process, grpc_port)


def clients(server: V2Server) -> tuple[Any, Any]:
    return (
        httpclient.InferenceServerClient(server.http_address, network_timeout=120),
        grpcclient.InferenceServerClient(server.grpc_address),
    )


# -- Triton's example image client, unmodified ------------------------------------------------------


def run_image_client(server: V2Server, protocol: str, *arguments: str) -> list[str]:
    url = server.http_address if protocol == "HTTP" else server.grpc_address
    result = subprocess.run(
        [sys.executable, str(IMAGE_CLIENT), "-m", DEFAULT, "-i", protocol, "-u", url, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "PASS", result.stdout
    return lines


def top_labels(lines: list[str]) -> list[str]:
    """The labels of the client's '    <probability> (<index>) = <label>' lines, in order."""
    return [line.split(" = ", 1)[1] for line in lines if line.startswith("    ")]


@pytest.mark.parametrize("protocol", ["HTTP", "gRPC"])
def test_the_image_client_classifies_a_cat_and_an_espresso(
    repository_server: V2Server, protocol: str
) -> None:
    for photo, expected in (("chelsea", CATS), ("coffee", {"espresso"})):
        lines = run_image_client(repository_server, protocol, "-c", "3", str(PHOTOS[photo][0]))
        labels = top_labels(lines)
        assert len(labels) == 3, lines
        assert labels[0] in expected, (photo, lines)


def test_the_image_client_batches_a_folder_and_both_protocols_agree(
    repository_server: V2Server, tmp_path: Path
) -> None:
    for photo in ("chelsea", "coffee"):
        shutil.copy(PHOTOS[photo][0], tmp_path / f"{photo}.png")
    answers = [
        run_image_client(repository_server, protocol, "-b", "2", str(tmp_path))
        for protocol in ("HTTP", "gRPC")
    ]
    assert answers[0] == answers[1]  # the same probabilities, to the last digit
    [cat, espresso] = top_labels(answers[0])
    assert cat in CATS and espresso == "espresso"


def test_the_pixels_input_gives_what_the_image_client_computes_from_them(repository_server: V2Server) -> None:
    """The client's own preprocessing (a plain resize to 224 x 224) sent as UINT8, over both
    protocols: the same top 3 as the image client printed."""
    pixels = np.asarray(Image.open(PHOTOS["coffee"][0]).convert("RGB").resize((224, 224), Image.BILINEAR))
    batch = pixels[np.newaxis]
    printed = run_image_client(repository_server, "HTTP", "-c", "3", str(PHOTOS["coffee"][0]))
    expected = [line.strip() for line in printed if line.startswith("    ")]
    for module, client in zip((httpclient, grpcclient), clients(repository_server), strict=True):
        tensor = module.InferInput("pixels", list(batch.shape), "UINT8")
        tensor.set_data_from_numpy(batch)
        result = client.infer(
            DEFAULT, [tensor], outputs=[module.InferRequestedOutput("probs", class_count=3)]
        )
        elements = [e.decode().split(":", 2) for e in result.as_numpy("probs")[0]]
        assert [f"{p} ({i}) = {label}" for p, i, label in elements] == expected


def test_pixels_of_the_wrong_size_are_refused_with_the_size_the_model_takes(
    repository_server: V2Server,
) -> None:
    body = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [0] * 12}]}
    response = httpx.post(f"{repository_server.http}/v2/models/{DEFAULT}/infer", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json() == {
        "error": "pixels must be uint8 [N, 224, 224, 3] (RGB, N >= 1), got uint8 [1, 2, 2, 3]"
    }


# -- model configuration ------------------------------------------------------------------------------


def test_model_config_over_http_and_grpc(repository_server: V2Server) -> None:
    http, grpc = clients(repository_server)
    config = http.get_model_config(DEFAULT)
    assert config["input"] == [
        {"name": "pixels", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [224, 224, 3]}
    ]
    assert config["output"] == [
        {"name": "probs", "data_type": "TYPE_FP32", "dims": [1000], "label_filename": "labels.txt"}
    ]
    assert (config["max_batch_size"], config["platform"]) == (32, "onnxruntime_onnx")
    assert http.get_model_config(DEFAULT, model_version="1") == config
    # gRPC: the same configuration as Triton's ModelConfig message.
    message = grpc.get_model_config(DEFAULT).config
    as_dict = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert as_dict["input"][0]["format"] == "FORMAT_NHWC"
    assert [int(d) for d in message.input[0].dims] == [224, 224, 3]
    assert message.max_batch_size == 32 and message.output[0].label_filename == "labels.txt"
    assert (
        message.dynamic_batching.max_queue_delay_microseconds
        == config["dynamic_batching"]["max_queue_delay_microseconds"]
    )
    with pytest.raises(InferenceServerException, match=r"StatusCode\.NOT_FOUND"):
        grpc.get_model_config("no-such-model")


# -- statistics ---------------------------------------------------------------------------------------


def stats_http(server: V2Server, path: str) -> tuple[int, Any]:
    response = httpx.get(f"{server.http}{path}", timeout=30)
    return response.status_code, response.json()


def default_stats(server: V2Server) -> dict[str, Any]:
    status, body = stats_http(server, f"/v2/models/{DEFAULT}/versions/1/stats")
    assert status == 200, body
    [stats] = body["model_stats"]
    return stats


def infer_pixels(client: Any, module: Any, images: int) -> None:
    batch = np.full((images, 224, 224, 3), 128, dtype=np.uint8)
    tensor = module.InferInput("pixels", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    client.infer(DEFAULT, [tensor])


def test_statistics_count_each_request_and_agree_over_http_and_grpc(repository_server: V2Server) -> None:
    http, grpc = clients(repository_server)
    before = default_stats(repository_server)
    infer_pixels(http, httpclient, 1)
    infer_pixels(grpc, grpcclient, 2)
    bad = httpx.post(
        f"{repository_server.http}/v2/models/{DEFAULT}/infer",
        json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": ["bm90IGFuIGltYWdl"]}]
        },
        timeout=30,
    )
    assert bad.status_code == 400
    after = default_stats(repository_server)

    def grew(*path: str) -> int:
        old, new = before, after
        for key in path:
            old, new = old[key], new[key]
        return int(new) - int(old)

    inference = ("inference_stats",)
    assert grew(*inference, "success", "count") == 2
    assert grew(*inference, "fail", "count") == 1
    assert grew(*inference, "queue", "count") == 2
    assert grew(*inference, "compute_infer", "count") == 2
    assert grew("inference_count") == 3
    assert grew(*inference, "success", "ns") > grew(*inference, "compute_infer", "ns") > 0
    assert after["last_inference"] >= before["last_inference"] > 0
    runs = sum(batch["compute_infer"]["count"] for batch in after["batch_stats"])
    assert runs == after["execution_count"]
    assert (
        sum(b["batch_size"] * b["compute_infer"]["count"] for b in after["batch_stats"])
        == after["inference_count"]
    )

    # The same figures from every route and over gRPC (no traffic in between).
    assert stats_http(repository_server, f"/v2/models/{DEFAULT}/stats")[1] == {"model_stats": [after]}
    assert http.get_inference_statistics(DEFAULT, model_version="1") == {"model_stats": [after]}
    all_models = http.get_inference_statistics()
    assert [(s["name"], s["version"]) for s in all_models["model_stats"]] == [(TINY, "2"), (DEFAULT, "1")]
    over_grpc = grpc.get_inference_statistics(DEFAULT, model_version="1", as_json=True)
    [grpc_stats] = over_grpc["model_stats"]
    assert int(grpc_stats["inference_count"]) == after["inference_count"]
    assert (
        int(grpc_stats["inference_stats"]["success"]["count"]) == after["inference_stats"]["success"]["count"]
    )
    assert int(grpc_stats["inference_stats"]["queue"]["ns"]) == after["inference_stats"]["queue"]["ns"]
    assert [int(b["batch_size"]) for b in grpc_stats["batch_stats"]] == [
        b["batch_size"] for b in after["batch_stats"]
    ]


def test_statistics_of_an_unknown_model_or_version(repository_server: V2Server) -> None:
    served = "'colours', 'efficientnet_lite0-imagenet1k'"
    assert stats_http(repository_server, "/v2/models/no-such-model/stats") == (
        404,
        {"error": f"no model named 'no-such-model'; this server serves {served}"},
    )
    assert stats_http(repository_server, f"/v2/models/{DEFAULT}/versions/7/stats") == (
        404,
        {"error": f"model {DEFAULT!r} has no version '7'; served versions: ['1']"},
    )
    _, grpc = clients(repository_server)
    with pytest.raises(InferenceServerException, match=r"StatusCode\.NOT_FOUND"):
        grpc.get_inference_statistics("no-such-model")


# -- the model repository -----------------------------------------------------------------------------


def index(client: Any) -> list[tuple[str, str, str]]:
    entries = client.get_model_repository_index()
    if not isinstance(entries, list):  # gRPC: the message
        entries = json_format.MessageToDict(entries, preserving_proto_field_name=True).get("models", [])
    return sorted((e["name"], e.get("version", ""), e["state"]) for e in entries)


def test_repository_index_load_and_unload_over_grpc_and_http(repository_server: V2Server) -> None:
    http, grpc = clients(repository_server)
    assert (TINY, "2", "READY") in index(grpc)
    assert index(grpc) == index(http)

    grpc.load_model(TINY, config='{"version_policy": {"specific": {"versions": [1]}}}')
    assert http.get_model_metadata(TINY)["versions"] == ["1"]
    assert [s["version"] for s in http.get_inference_statistics(TINY)["model_stats"]] == ["1"]

    grpc.unload_model(TINY)
    assert [entry for entry in index(grpc) if entry[0] == TINY] == [
        (TINY, "1", "UNAVAILABLE"),
        (TINY, "2", "UNAVAILABLE"),
    ]
    assert index(grpc) == index(http)
    assert stats_http(repository_server, f"/v2/models/{TINY}/stats")[0] == 404

    http.load_model(TINY)  # its own policy again: the latest version
    assert [entry for entry in index(http) if entry[0] == TINY and entry[2] == "READY"] == [
        (TINY, "2", "READY")
    ]
    http.unload_model(TINY)
    grpc.load_model(TINY)
    assert grpc.get_model_metadata(TINY, as_json=True)["versions"] == ["2"]


def test_a_failed_load_is_invalid_argument_and_serving_goes_on(repository_server: V2Server) -> None:
    _, grpc = clients(repository_server)
    with pytest.raises(InferenceServerException, match=r"StatusCode\.INVALID_ARGUMENT") as raised:
        grpc.load_model("no-such-model")
    assert "no-such-model" in str(raised.value)
    with pytest.raises(InferenceServerException, match="unsupported load parameter"):
        grpc.load_model(TINY, files={"file:1/model.onnx": b"\x00"})
    assert grpc.is_model_ready(DEFAULT)


# -- API keys, and no repository calls without explicit model control -------------------------------


def test_the_extension_calls_need_the_api_key(keyed_server: V2Server) -> None:
    grpc = grpcclient.InferenceServerClient(keyed_server.grpc_address)
    calls = (
        lambda **kw: grpc.get_model_config("tiny-rgb", **kw),
        lambda **kw: grpc.get_inference_statistics("tiny-rgb", **kw),
        lambda **kw: grpc.get_model_repository_index(**kw),
        lambda **kw: grpc.load_model("tiny-rgb", **kw),
        lambda **kw: grpc.unload_model("tiny-rgb", **kw),
    )
    for call in calls:
        with pytest.raises(InferenceServerException, match=r"StatusCode\.UNAUTHENTICATED"):
            call()
        with pytest.raises(InferenceServerException, match=r"StatusCode\.UNAUTHENTICATED"):
            call(headers={"authorization": "Bearer wrong-key"})
    headers = {"authorization": f"Bearer {KEY}"}
    assert grpc.get_model_config("tiny-rgb", headers=headers).config.name == "tiny-rgb"
    stats = grpc.get_inference_statistics("tiny-rgb", headers=headers, as_json=True)
    assert [s["name"] for s in stats["model_stats"]] == ["tiny-rgb"]
    index = grpc.get_model_repository_index(headers=headers, as_json=True)
    assert [(m["name"], m["state"]) for m in index["models"]] == [("tiny-rgb", "READY")]
    grpc.load_model("tiny-rgb", headers={"x-api-key": KEY})  # the same file: nothing to reload
    assert grpc.is_model_ready("tiny-rgb", headers=headers)
    assert httpx.get(f"{keyed_server.http}/v2/models/tiny-rgb/stats", timeout=30).status_code == 401


def test_without_explicit_model_control_the_repository_calls_are_unimplemented(tiny_v2: V2Server) -> None:
    grpc = grpcclient.InferenceServerClient(tiny_v2.grpc_address)
    for call in (grpc.get_model_repository_index, lambda: grpc.load_model("tiny-rgb")):
        with pytest.raises(InferenceServerException, match=r"StatusCode\.UNIMPLEMENTED"):
            call()
    assert grpc.get_model_config("tiny-rgb").config.name == "tiny-rgb"
