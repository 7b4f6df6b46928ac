"""TensorFlow Serving's model status (``model_version_status``) of the versions we serve."""

from __future__ import annotations

from app.schemas import ModelInfo, ModelStatusInfo, ModelVersionStatus, VersionStatusDetail
from app.state import AppState


def version_status(state: AppState, name: str, version: str | None = None) -> list[ModelVersionStatus]:
    """Every served version of ``name`` (or only ``version``): AVAILABLE, UNLOADING while draining."""
    served = state.served_models()
    condition = "UNLOADING" if state.lifecycle.draining else "AVAILABLE"
    return [
        ModelVersionStatus(
            version=model.version,
            state=condition,
            status=VersionStatusDetail(error_code="OK", error_message=""),
        )
        for model in served
        if model.name == name and version in (None, model.version)
    ]


def with_version_status(info: ModelInfo, state: AppState, version: str | None = None) -> ModelStatusInfo:
    """The card of ``info`` with the TF Serving status of its name's versions."""
    return ModelStatusInfo(**dict(info), model_version_status=version_status(state, info.name, version))
