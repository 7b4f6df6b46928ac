"""What the v2 protocol says about the server and its models, for both REST and gRPC."""

from __future__ import annotations

from typing import Any

from app.inference.engine import CPU_PROVIDER, OPENVINO_PROVIDER
from app.inference.model import ServedModel
from app.inference.statistics import Duration, VersionStatistics
from app.state import AppState
from app.v2 import codec
from app.v2.pixels import PIXELS_INPUT, UINT8

SERVER_NAME = "imgserve"


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(codec.EXTENSIONS)}


def platform(model: ServedModel) -> str:
    """Triton's platform name for what runs the model: ONNX Runtime, or OpenVINO."""
    return "openvino" if model.execution_provider == OPENVINO_PROVIDER else codec.PLATFORM


def model_metadata(state: AppState, model: ServedModel, *, parameters: bool = True) -> dict[str, Any]:
    """Name, every served version of the name, platform, inputs and outputs; with
    ``parameters`` (REST; gRPC's message has no such field) what runs it and in which precision."""
    versions = [m.version for m in state.served_models() if m.name == model.name]
    tensors = codec.tensor_metadata(model.card.num_classes)
    if state.settings.v2_input == "pixels":
        tensors["inputs"] = [{"name": PIXELS_INPUT, "datatype": UINT8, "shape": [-1, *model.pixels_shape]}]
    body: dict[str, Any] = {"name": model.name, "versions": versions, "platform": platform(model), **tensors}
    if parameters:
        body["parameters"] = {"execution_provider": model.execution_provider, "precision": model.precision}
    return body


def _config_input(state: AppState, model: ServedModel) -> dict[str, Any]:
    """The declared input as Triton's ModelInput (dims without the batch axis)."""
    if state.settings.v2_input == "pixels":
        dims = list(model.pixels_shape)
        return {"name": PIXELS_INPUT, "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": dims}
    return {"name": codec.INPUT_NAME, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}


def triton_config(state: AppState, model: ServedModel) -> dict[str, Any]:
    """Triton's ModelConfig as JSON (the model configuration extension).

    ``max_batch_size`` is the most images one request may carry (``max_images_per_request``);
    the dynamic batcher gathers up to ``preferred_batch_size`` images from many requests.
    """
    batching = model.batching
    on_cpu = model.execution_provider in (CPU_PROVIDER, OPENVINO_PROVIDER)
    return {
        "name": model.name,
        "platform": codec.PLATFORM,
        "backend": "openvino" if platform(model) == "openvino" else "onnxruntime",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": state.settings.max_images_per_request,
        "input": [_config_input(state, model)],
        "output": [
            {
                "name": codec.OUTPUT_NAME,
                "data_type": "TYPE_FP32",
                "dims": [model.card.num_classes],
                # Triton reads labels from this file of its model repository; here they come
                # from the model card (GET /v1/models/{name}) and the classification extension.
                "label_filename": "labels.txt",
            }
        ],
        "dynamic_batching": {
            "preferred_batch_size": [batching.max_batch_size],
            "max_queue_delay_microseconds": round(batching.max_delay_ms * 1000),
        },
        "instance_group": [{"count": 1, "kind": "KIND_CPU" if on_cpu else "KIND_GPU"}],
    }


def model_statistics(state: AppState, name: str | None, version: str | None = None) -> dict[str, Any]:
    """Triton's statistics extension: every loaded version (no ``name``), every loaded version
    of ``name``, or one version; ``ModelNotFoundError`` for a name or version not served."""
    if not name:
        state.served_models()  # NotReadyError while loading
        found = state.statistics.versions()
    else:
        model = state.get_model(name, version or None)
        named = state.statistics.get(model.name, model.version) if version else None
        found = [named] if named is not None else state.statistics.versions(model.name)
    return {"model_stats": [_version_statistics(s) for s in found]}


def _version_statistics(stats: VersionStatistics) -> dict[str, Any]:
    return {
        "name": stats.name,
        "version": stats.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
            # No response cache here: nothing is ever a hit or a miss.
            "cache_hit": _duration(Duration()),
            "cache_miss": _duration(Duration()),
        },
        "response_stats": {},  # decoupled models only
        "batch_stats": [
            {
                "batch_size": batch.batch_size,
                "compute_input": _duration(batch.compute_input),
                "compute_infer": _duration(batch.compute_infer),
                "compute_output": _duration(batch.compute_output),
            }
            for batch in stats.batch_statistics()
        ],
        "memory_usage": [],
    }


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}
