"""What the v2 protocol says about the server and its models, for both REST and gRPC."""

from __future__ import annotations

from typing import Any

from app.inference.model import ServedModel
from app.state import AppState
from app.v2 import codec

SERVER_NAME = "imgserve"


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": version, "extensions": list(codec.EXTENSIONS)}


def model_metadata(state: AppState, model: ServedModel) -> dict[str, Any]:
    """Name, every served version of the name, platform, inputs and outputs."""
    versions = [m.version for m in state.served_models() if m.name == model.name]
    return {
        "name": model.name,
        "versions": versions,
        "platform": codec.PLATFORM,
        **codec.tensor_metadata(model.card.num_classes, model.card.explanation),
    }


def triton_config(state: AppState, model: ServedModel) -> dict[str, Any]:
    """Triton's ModelConfig as JSON (the model configuration extension).

    ``max_batch_size`` is the most images one request may carry (``max_images_per_request``);
    the dynamic batcher gathers up to ``preferred_batch_size`` images from many requests.
    """
    batching = model.batching
    on_cpu = model.execution_provider.startswith("CPU")
    return {
        "name": model.name,
        "platform": codec.PLATFORM,
        "backend": "onnxruntime",
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
