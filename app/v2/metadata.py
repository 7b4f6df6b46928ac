"""What the v2 protocol says about the server and its models, for both REST and gRPC."""

from __future__ import annotations

from typing import Any

from app.inference.engine import CPU_PROVIDER, OPENVINO_PROVIDER
from app.inference.model import ServedModel
from app.state import AppState
from app.v2 import codec

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
    body: dict[str, Any] = {
        "name": model.name,
        "versions": versions,
        "platform": platform(model),
        **codec.tensor_metadata(model.card.num_classes),
    }
    if parameters:
        body["parameters"] = {"execution_provider": model.execution_provider, "precision": model.precision}
    return body


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
        "input": [
            {"name": codec.INPUT_NAME, "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
        ],
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
