"""The models this process serves, by name and version.

A front end asks for a model by name (and optionally a version), or for the default model,
and gets a :class:`ServedModel` or ``ModelNotFoundError``; it never sees sessions or batchers.
Versions are strings as the cards give them; "latest" of a name is the one added last.
"""

from __future__ import annotations

from app.inference.errors import ModelNotFoundError, NotReadyError
from app.inference.model import ServedModel


class ModelRegistry:
    """Served models keyed by (name, version); the first added is the default."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ServedModel] = {}
        self._default: tuple[str, str] | None = None

    def add(self, model: ServedModel) -> None:
        key = (model.name, model.version)
        if key in self._models:
            raise ValueError(f"model {model.name!r} version {model.version!r} is already served")
        self._models[key] = model
        if self._default is None:
            self._default = key

    def models(self) -> list[ServedModel]:
        """Every served model version, in the order they were added."""
        return list(self._models.values())

    def default(self) -> ServedModel:
        if self._default is None:
            raise NotReadyError("not ready: the model is loading")
        return self._models[self._default]

    def resolve(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The named model (the latest version unless one is given), or the default one."""
        if name is None:
            return self.default()
        versions = [model for (model_name, _), model in self._models.items() if model_name == name]
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r}; this server serves {self._names()}")
        if version is None:
            return versions[-1]
        for model in versions:
            if model.version == version:
                return model
        served = [model.version for model in versions]
        raise ModelNotFoundError(f"model {name!r} has no version {version!r}; served versions: {served}")

    def _names(self) -> str:
        return ", ".join(repr(name) for name in dict.fromkeys(name for name, _ in self._models)) or "none"
