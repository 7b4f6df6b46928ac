"""TensorFlow Serving's model status (``model_version_status``) of a model's versions."""

from __future__ import annotations

from app.inference.registry import VersionState
from app.schemas import ModelInfo, ModelStatusInfo, TFServingVersionStatus, VersionStatusDetail
from app.state import AppState

# The registry's (Triton's) states in TF Serving's words; a failed load has ended.
_TF_SERVING_STATE = {
    VersionState.LOADING: "LOADING",
    VersionState.READY: "AVAILABLE",
    VersionState.UNLOADING: "UNLOADING",
    VersionState.UNAVAILABLE: "END",
}


def version_status(state: AppState, name: str, version: str | None = None) -> list[TFServingVersionStatus]:
    """Every known version of ``name`` (or only ``version``); all UNLOADING while the server drains."""
    entries = []
    for status in state.registry.statuses():
        if status.name != name or status.version is None or version not in (None, status.version):
            continue
        condition = "UNLOADING" if state.lifecycle.draining else _TF_SERVING_STATE[status.state]
        failed = status.state == VersionState.UNAVAILABLE
        entries.append(
            TFServingVersionStatus(
                version=status.version,
                state=condition,
                status=VersionStatusDetail(
                    error_code="UNKNOWN" if failed else "OK", error_message=status.reason if failed else ""
                ),
            )
        )
    return entries


def with_version_status(info: ModelInfo, state: AppState, version: str | None = None) -> ModelStatusInfo:
    """The card of ``info`` with the TF Serving status of its name's versions."""
    return ModelStatusInfo(**dict(info), model_version_status=version_status(state, info.name, version))
