"""The models this process serves, by name and version, and the state of every version.

A front end asks for a model by name (and optionally a version), or for the default model,
and gets a :class:`ServedModel` or an error (``ModelNotFoundError``, or ``NotReadyError`` while
it loads); it never sees sessions or batchers. "Latest" is the highest version served
(numerically when versions are numbers). Every change here is synchronous, so a front end on the
event loop sees a swap as one step: before it the old version answers, after it the new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from app.inference.errors import ModelNotFoundError, NotReadyError
from app.inference.model import ServedModel


class VersionState(StrEnum):
    """Triton's model states."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class VersionStatus:
    """One model version's state; ``version`` None when the failure came before a version was known."""

    name: str
    version: str | None
    state: VersionState
    reason: str = ""


def version_order(version: str | None) -> tuple[int, int, str]:
    """Numbers numerically, before other strings; a version not yet known first."""
    if version is None:
        return (0, 0, "")
    return (1, int(version), "") if version.isdigit() else (2, 0, version)


class ModelRegistry:
    """Served models keyed by (name, version), the versions being retired, and every state.

    ``default_name`` names the model that answers requests that name none; when it is None and
    exactly one model is served, that one is the default.
    """

    def __init__(self, default_name: str | None = None) -> None:
        self.default_name = default_name
        self._ready: dict[tuple[str, str], ServedModel] = {}
        self._retiring: dict[int, ServedModel] = {}
        self._status: dict[tuple[str, str | None], VersionStatus] = {}

    # -- changes (the model control calls these on the event loop) ------------------------------
    def add(self, model: ServedModel) -> None:
        """Serve ``model``; a version already served is an error (use :meth:`serve` to replace)."""
        if (model.name, model.version) in self._ready:
            raise ValueError(f"model {model.name!r} version {model.version!r} is already served")
        self.serve(model)

    def serve(self, model: ServedModel, retire: Iterable[str] = ()) -> list[ServedModel]:
        """In one step: serve ``model`` and stop resolving the versions in ``retire`` of the same
        model (and a model it replaces); returns the retired models, to be drained."""
        key = (model.name, model.version)
        retired = [self._ready[key]] if key in self._ready else []
        self._ready[key] = model
        self._status[key] = VersionStatus(model.name, model.version, VersionState.READY)
        self._status.pop((model.name, None), None)
        retired += self.retire(model.name, [v for v in retire if v != model.version])
        for old in retired:
            self._retiring[id(old)] = old
        return retired

    def retire(self, name: str, versions: Iterable[str]) -> list[ServedModel]:
        """Stop resolving these versions of ``name``; they are UNLOADING until :meth:`forget`."""
        retired = []
        for version in versions:
            model = self._ready.pop((name, version), None)
            if model is not None:
                self._retiring[id(model)] = model
                self._status[(name, version)] = VersionStatus(name, version, VersionState.UNLOADING)
                retired.append(model)
        return retired

    def forget(self, model: ServedModel, reason: str = "unloaded") -> None:
        """``model`` has drained: nothing here refers to it any more."""
        self._retiring.pop(id(model), None)
        key = (model.name, model.version)
        if key not in self._ready:
            self._status[key] = VersionStatus(model.name, model.version, VersionState.UNAVAILABLE, reason)

    def set_loading(self, name: str, version: str | None) -> None:
        if (name, version) not in self._ready or version is None:
            self._status[(name, version)] = VersionStatus(name, version, VersionState.LOADING)

    def set_failed(self, name: str, version: str | None, reason: str) -> None:
        """A load failed; a version that is served (an older copy of it) keeps its READY state."""
        if version is not None and (name, version) in self._ready:
            return
        self._status[(name, version)] = VersionStatus(name, version, VersionState.UNAVAILABLE, reason)

    def clear_status(self, name: str, keep_versions: Iterable[str]) -> None:
        """Drop ``name``'s statuses of versions neither served, retiring nor in ``keep_versions``."""
        keep = set(keep_versions)
        busy = {version for (model_name, version) in self._ready if model_name == name}
        busy |= {m.version for m in self._retiring.values() if m.name == name}
        for key in [k for k in self._status if k[0] == name]:
            if key[1] not in busy and key[1] not in keep:
                del self._status[key]

    # -- queries (what front ends call) ---------------------------------------------------------
    def models(self) -> list[ServedModel]:
        """Every served model version, by name, then version."""
        return sorted(self._ready.values(), key=lambda m: (m.name, version_order(m.version)))

    def all_models(self) -> list[ServedModel]:
        """The served versions and those still draining (each holds a session)."""
        return [*self._ready.values(), *self._retiring.values()]

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._ready})

    def versions(self, name: str) -> list[str]:
        """The served versions of ``name``, ascending."""
        return sorted((v for n, v in self._ready if n == name), key=version_order)

    def statuses(self) -> list[VersionStatus]:
        """Every version known: loading, ready, unloading, or unavailable with the reason."""
        return sorted(self._status.values(), key=lambda s: (s.name, version_order(s.version)))

    def default(self) -> ServedModel:
        name = self.default_name
        if name is None:
            names = self.names()
            if not names:
                raise NotReadyError("not ready: the model is loading")
            if len(names) > 1:
                raise ModelNotFoundError(
                    f"no default model: this server serves {self._names()}; name the model in the request"
                )
            name = names[0]
        if not self.versions(name):
            raise NotReadyError(
                f"not ready: the default model {name!r} has no version loaded{self._why(name)}"
            )
        return self.resolve(name)

    def resolve(self, name: str | None = None, version: str | None = None) -> ServedModel:
        """The named model (the latest version unless one is given), or the default one."""
        if name is None:
            return self.default()
        versions = self.versions(name)
        if version is None and versions:
            return self._ready[(name, versions[-1])]
        if version is not None and (name, version) in self._ready:
            return self._ready[(name, version)]
        status = self._status.get((name, version)) if version is not None else None
        if status is not None and status.state == VersionState.LOADING:
            raise NotReadyError(f"model {name!r} version {version!r} is loading; retry")
        if not versions:
            if any(key[0] == name for key in self._status):
                raise ModelNotFoundError(f"model {name!r} is not loaded{self._why(name)}")
            raise ModelNotFoundError(f"no model named {name!r}; this server serves {self._names()}")
        why = f" ({status.state}: {status.reason})" if status is not None and status.reason else ""
        raise ModelNotFoundError(
            f"model {name!r} has no version {version!r}{why}; served versions: {versions}"
        )

    def _why(self, name: str) -> str:
        reasons = [s.reason for s in self.statuses() if s.name == name and s.reason]
        return f" ({reasons[-1]})" if reasons else ""

    def _names(self) -> str:
        return ", ".join(repr(name) for name in self.names()) or "none"
