"""Model control: load, swap and unload model versions while the server serves.

A load reads the version's files, validates them (the card, the graph against the card, the
sha256 in ``model.json``), creates the ONNX Runtime session and warms it up, all in a worker
thread, off the event loop. Then, in one synchronous step on the loop, the registry serves the
new version and stops resolving the versions it replaces (:meth:`ModelRegistry.serve`). The
requests those had already admitted finish on them (:meth:`ServedModel.drain`); then their
batchers stop and nothing refers to their sessions any more, so ONNX Runtime frees them.

A version that fails to load changes nothing that is served: the failure is recorded with its
reason (the repository index shows it) and raised as :class:`LoadError`.

One operation at a time (a lock): a swap holds at most one more session than the versions
served, and ``max_loaded_versions`` bounds those.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from app.inference.batcher import BatcherConfig, powers_of_two_up_to
from app.inference.engine import (
    Engine,
    EngineError,
    EngineOptions,
    default_max_batch_size,
    live_session_count,
)
from app.inference.model import Decoder, InferenceObserver, ServedModel
from app.inference.registry import ModelRegistry, VersionState, VersionStatus
from app.inference.repository import (
    FileSignature,
    ModelSource,
    RepositoryError,
    VersionPolicy,
    VersionSource,
)
from app.inference.statistics import ModelStatistics

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Path, EngineOptions], Engine]


class LoadError(Exception):
    """A model or version could not be loaded; the message says which and why."""


class VersionObserver(Protocol):
    """Per-version metrics: an observer for a version's batches, and forgetting it on unload."""

    def for_version(self, model_name: str, version: str) -> InferenceObserver: ...
    def track_version(self, model: ServedModel) -> None: ...
    def forget_version(self, model: ServedModel) -> None: ...


@dataclass(frozen=True)
class LoadOptions:
    """How every version is loaded and run. ``batcher.max_batch_size`` 0 leaves the cap to the
    execution provider; no ``warmup_batch_sizes``: powers of two up to the cap."""

    engine: EngineOptions
    batcher: BatcherConfig
    warmup_batch_sizes: Sequence[int] = (1,)
    max_loaded_versions: int = 8
    drain_timeout_s: float = 30.0


def resolve_batching(options: LoadOptions, provider: str) -> tuple[BatcherConfig, list[int]]:
    """The batcher's settings and the warm-up batch sizes for a version that runs on ``provider``."""
    cap = options.batcher.max_batch_size or default_max_batch_size(provider)
    sizes = sorted(set(options.warmup_batch_sizes)) or powers_of_two_up_to(cap)
    if sizes[-1] > cap:
        raise EngineError(
            f"warmup_batch_sizes {[n for n in sizes if n > cap]} exceed max_batch_size {cap} "
            f"(on {provider}); lower them or set IMGSERVE_MAX_BATCH_SIZE"
        )
    return replace(options.batcher, max_batch_size=cap), sizes


@dataclass(frozen=True)
class _Origin:
    path: Path
    signature: FileSignature | None


class ModelControl:
    """Loads what a :class:`ModelSource` says into a :class:`ModelRegistry`, and swaps it live.

    ``start``/``stop`` from a lifespan; ``load``/``unload``/``rescan`` while serving.
    """

    def __init__(
        self,
        source: ModelSource,
        registry: ModelRegistry,
        decoder: Decoder,
        load_engine: EngineLoader,
        options: LoadOptions,
        observer: VersionObserver | None = None,
        statistics: ModelStatistics | None = None,
    ) -> None:
        self.source = source
        self.registry = registry
        self.decoder = decoder
        self.options = options
        self._load_engine = load_engine
        self._observer = observer
        self._statistics = statistics
        self._lock = asyncio.Lock()
        self._origins: dict[tuple[str, str], _Origin] = {}
        self._policies: dict[str, VersionPolicy] = {}  # set by a load request's config
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load every model the source holds; ``LoadError`` naming each failure."""
        try:
            names = self.source.models_to_start()
        except RepositoryError as exc:
            raise LoadError(str(exc)) from exc
        failures = []
        async with self._lock:
            for name in names:
                try:
                    await self._sync_model(name)
                except LoadError as exc:
                    failures.append(str(exc))
        if failures:
            raise LoadError("; ".join(failures))

    async def stop(self, timeout_s: float) -> None:
        """Stop every batcher (served and draining); their queued images run first."""
        self._closed = True
        models = self.registry.all_models()
        await asyncio.gather(*(model.stop(timeout_s) for model in models))

    # -- control ----------------------------------------------------------------------------------
    async def load(self, name: str, policy: VersionPolicy | None = None) -> None:
        """Load or reload ``name``: serve the versions its policy picks now, retire the others.

        ``policy`` replaces the model's ``config.toml`` until a load without one.
        """
        async with self._lock:
            if policy is None:
                self._policies.pop(name, None)
            else:
                self._policies[name] = policy
            await self._sync_model(name)

    async def unload(self, name: str) -> None:
        """Retire every version of ``name``; returns once they have drained."""
        async with self._lock:
            if not self.registry.versions(name):
                if not self._known(name):
                    raise LoadError(f"no model {name!r} in {self.source.describe()}")
                return
            self._policies.pop(name, None)
            retired = self.registry.retire(name, self.registry.versions(name))
            logger.info("model unloading", extra={"model": name, "versions": [m.version for m in retired]})
            await self._drain(retired)

    async def rescan(self, loaded_only: bool) -> list[str]:
        """Bring the served versions in line with the source; ``loaded_only``: only models that
        are loaded now (explicit model control). Models gone from the source are unloaded.
        Returns the failures (each also logged and in the index)."""
        async with self._lock:
            try:
                on_disk = self.source.model_names()
            except RepositoryError as exc:
                logger.error("rescan failed: %s", exc)
                return [str(exc)]
            loaded = self.registry.names()
            names = loaded if loaded_only else sorted({*on_disk, *loaded})
            failures = []
            for name in names:
                if name not in on_disk:
                    await self._drain(self.registry.retire(name, self.registry.versions(name)))
                    continue
                try:
                    await self._sync_model(name)
                except LoadError as exc:
                    failures.append(str(exc))
        logger.info("repository rescanned", extra={"models": names, "failures": failures})
        return failures

    def index(self, ready_only: bool = False) -> list[VersionStatus]:
        """Every version known (with its state and reason), and every model on disk not loaded."""
        statuses = self.registry.statuses()
        if ready_only:
            return [s for s in statuses if s.state == VersionState.READY]
        known = {s.name for s in statuses}
        try:
            on_disk = self.source.model_names()
        except RepositoryError:
            on_disk = []
        missing = [
            VersionStatus(n, None, VersionState.UNAVAILABLE, "not loaded") for n in on_disk if n not in known
        ]
        return sorted([*statuses, *missing], key=lambda s: s.name)

    # -- the work -------------------------------------------------------------------------------
    async def _sync_model(self, name: str | None) -> None:
        try:
            sources = self.source.plan(name, self._policies.get(name) if name else None)
        except RepositoryError as exc:
            if name is not None and self._known(name):  # not any name a request makes up
                self.registry.set_failed(name, None, str(exc))
            raise LoadError(str(exc)) from exc
        if name is not None:
            self.registry.clear_status(name, keep_versions=self.source.versions_on_disk(name))
        wanted = {source.version for source in sources if source.version is not None}
        failures = []
        for source in sources:
            if self._is_served(source):
                continue
            try:
                self._check_room(source, wanted)
                model = await self._load(source)
            except LoadError as exc:
                failures.append(str(exc))
                continue
            wanted.add(model.version)
            stale = [v for v in self.registry.versions(model.name) if v not in wanted]
            retired = self.registry.serve(model, retire=stale)
            self._origins[(model.name, model.version)] = _Origin(source.path, source.signature)
            if self._observer is not None:
                self._observer.track_version(model)
            logger.info(
                "model version serving",
                extra={
                    "model": model.name,
                    "model_version": model.version,
                    "retiring": [m.version for m in retired],
                },
            )
            await self._drain(retired)
        if name is None:  # a single file: its card named it
            name = next(iter(self.source.model_names()), None)
        if name is not None and wanted and any(v in wanted for v in self.registry.versions(name)):
            # The policy may now pick fewer versions (a new config): retire the rest.
            await self._drain(
                self.registry.retire(name, [v for v in self.registry.versions(name) if v not in wanted])
            )
        if failures:
            raise LoadError("; ".join(failures))

    def _known(self, name: str) -> bool:
        """On disk now, or loaded (or failed) before."""
        try:
            on_disk = name in self.source.model_names()
        except RepositoryError:
            on_disk = False
        return on_disk or any(status.name == name for status in self.registry.statuses())

    def _is_served(self, source: VersionSource) -> bool:
        """A served version loaded from this very file, unchanged since."""
        if source.name is None:
            return False
        versions = [source.version] if source.version is not None else self.registry.versions(source.name)
        signature = source.signature
        return any(
            self._origins.get((source.name, v)) == _Origin(source.path, signature)
            and v in self.registry.versions(source.name)
            for v in versions
        )

    def _check_room(self, source: VersionSource, wanted: set[str]) -> None:
        served = self.registry.models()
        replaced = [
            m
            for m in served
            if m.name == source.name and (m.version not in wanted or m.version == source.version)
        ]
        if len(served) - len(replaced) + 1 > self.options.max_loaded_versions:
            message = (
                f"cannot load {self._describe(source)}: {len(served)} model versions are loaded and the "
                f"limit is {self.options.max_loaded_versions}; unload one first"
            )
            if source.name is not None:
                self.registry.set_failed(source.name, source.version, message)
            raise LoadError(message)

    async def _load(self, source: VersionSource) -> ServedModel:
        if self._closed:
            raise LoadError(f"cannot load {self._describe(source)}: the server is shutting down")
        if source.name is not None:
            self.registry.set_loading(source.name, source.version)
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(self._load_engine, source.path, self.options.engine)
            batching, warmup_sizes = resolve_batching(self.options, engine.execution_provider)
            warmup = await asyncio.to_thread(engine.warm_up, warmup_sizes)
        except Exception as exc:  # a bad file must never take the server down
            if not _expected_load_error(exc):
                logger.exception("unexpected error loading %s", source.path)
            message = f"cannot load {self._describe(source)}: {exc}"
            if source.name is not None:
                self.registry.set_failed(source.name, source.version, message)
            logger.error("model load failed", extra={"model": source.name, "reason": message})
            raise LoadError(message) from exc
        if self._closed:
            raise LoadError(f"cannot load {self._describe(source)}: the server is shutting down")
        name = source.name or engine.card.name
        version = source.version or engine.card.version
        observer = self._observer.for_version(name, version) if self._observer is not None else None
        statistics = self._statistics.track(name, version) if self._statistics is not None else None
        model = ServedModel(
            engine,
            batching,
            self.decoder,
            observer,
            name=name,
            version=version,
            warmup_batch_sizes=warmup_sizes,
            statistics=statistics,
        )
        model.start()
        if source.name is None:
            self.source.adopt(name)
        logger.info(
            "model ready",
            extra={
                "model": name,
                "model_version": version,
                "card_version": engine.card.version,
                "path": str(source.path),
                "execution_provider": engine.execution_provider,
                "load_s": round(time.perf_counter() - started, 3),
                "warmup_ms": {size: round(s * 1000, 1) for size, s in warmup.items()},
            },
        )
        return model

    async def _drain(self, retired: list[ServedModel]) -> None:
        """Let each retired version finish its admitted requests, then let its session go.

        Empties ``retired``: once drained, no reference to a model may be left here.
        """
        if not retired:
            return
        await asyncio.gather(*(model.drain(self.options.drain_timeout_s) for model in retired))
        while retired:
            model = retired.pop()
            self.registry.forget(model)
            if model.version not in self.registry.versions(model.name):
                self._origins.pop((model.name, model.version), None)
            if self._observer is not None:
                self._observer.forget_version(model)
            if self._statistics is not None:
                self._statistics.forget(model.name, model.version)
            logger.info("model version unloaded", extra={"model": model.name, "model_version": model.version})
            del model
        collect_garbage()
        release_free_memory()
        logger.info("onnx sessions alive after unloading", extra={"onnx_sessions": live_session_count()})

    def _describe(self, source: VersionSource) -> str:
        if source.name is None:
            return str(source.path)
        version = f" version {source.version}" if source.version is not None else ""
        return f"model {source.name!r}{version} ({source.path})"


def collect_garbage() -> None:
    """A full collection that also sees the objects frozen at start-up (``gc.freeze``).

    A retired version's session can be held in reference cycles (its batcher's tasks, a failed
    batch's traceback) that only the collector frees; a version loaded at start-up was frozen
    with everything else then, so a plain ``gc.collect()`` would never free it. Unfrozen for
    this one collection (it costs what a full collection did before the freeze, once per
    unload), then what is still alive is frozen again.
    """
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()


def release_free_memory() -> None:
    """Hand the heap memory freed with a session back to the OS (glibc's ``malloc_trim``).

    glibc keeps freed memory in its per-thread arenas; each session's threads allocate in their
    own, so without this the resident size creeps up by tens of MB per swap although nothing
    leaks (the session count says so). Elsewhere than glibc there is nothing to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _expected_load_error(exc: Exception) -> bool:
    return isinstance(exc, EngineError | OSError)
