"""Start-up and shut-down: load and warm the models, start the decoder, batchers and the gRPC server,
stop them."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app.config import Settings
from app.dataplane import DataPlane, RequestLimits
from app.inference.batcher import BatcherConfig
from app.inference.control import LoadError, LoadOptions, ModelControl
from app.inference.engine import Engine, EngineError, EngineOptions, live_session_count
from app.inference.model import DecodeBudget, Decoder
from app.inference.preprocess import ImageLimits, configure_pillow
from app.inference.repository import DirectoryRepository, ModelSource, SingleModelFile
from app.runtime_watch import RuntimeWatch
from app.state import AppState
from app.v2.grpc_server import start_grpc_server

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Path, EngineOptions], Engine]

# Past the request deadline, a retired version's last requests have failed anyway.
_DRAIN_MARGIN_S = 1.0


def create_lifespan(state: AppState, load_engine: EngineLoader) -> Callable[[FastAPI], Any]:
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(settings.max_image_pixels)
        decoder = create_decoder(settings, state)
        control = create_model_control(settings, state, load_engine, decoder)
        try:
            await control.start()
            check_default_model(settings, state)
        except (LoadError, EngineError) as exc:
            # A configuration or deployment problem: one line says what, no traceback follows.
            state.lifecycle.startup_error = str(exc)
            logger.error("cannot start: %s", exc)
            await control.stop(timeout_s=0.5)
            raise
        except BaseException:
            await control.stop(timeout_s=0.5)
            raise
        decoder.start()
        # One thread: the multipart parser is pure Python and holds the GIL (app/api/uploads.py).
        state.parse_pool = ThreadPoolExecutor(1, thread_name_prefix="parse")
        state.dataplane = create_dataplane(settings, state)
        state.control = control
        track_model_metrics(state)
        state.metrics.track_budgets(lambda: decoder.decoding_pixels, lambda: state.body_budget.held_bytes)
        state.lifecycle.ready = True
        grpc_server = await start_grpc_server(state, app.version) if settings.grpc_port else None
        watch = RuntimeWatch(state.metrics.event_loop_lag, state.metrics.gc_pause)
        watch.start()
        freeze_startup_objects()
        try:
            yield
        finally:
            state.lifecycle.ready = False
            gc.unfreeze()
            await watch.stop()
            if grpc_server is not None:  # its calls in flight finish before the batchers stop
                await grpc_server.stop()
            await control.stop(timeout_s=max(0.5, state.lifecycle.seconds_left(settings.drain_timeout_s)))
            decoder.stop()
            state.parse_pool.shutdown(wait=False, cancel_futures=True)
            logger.info("models stopped")

    return lifespan


def freeze_startup_objects() -> None:
    """Move what start-up built (modules, the models, their warm-up) out of the collector's
    sight: every full collection while serving would otherwise walk them again (40 ms of held GIL
    on a 2-core machine, a stall for every request). CPython's ``gc.freeze`` advice: collect
    first, so that start-up's garbage is not kept. A model version unloaded later is collected
    with the frozen objects seen again (``app.inference.control.collect_garbage``)."""
    gc.collect()
    gc.freeze()


def create_decoder(settings: Settings, state: AppState) -> Decoder:
    limits = ImageLimits(
        allowed_formats=frozenset(settings.allowed_formats),
        max_image_pixels=settings.max_image_pixels,
        max_jpeg_scans=settings.max_jpeg_scans,
    )
    budget = DecodeBudget(
        max_request_pixels=settings.max_request_pixels,
        max_decoding_pixels=settings.max_decoding_pixels,
        # Never so much that a request at max_request_pixels could not be admitted.
        light_reserved_pixels=min(
            settings.light_decoding_pixels, settings.max_decoding_pixels - settings.max_request_pixels
        ),
    )
    return Decoder(settings.decode_threads, limits, observer=state.metrics, budget=budget)


def create_dataplane(settings: Settings, state: AppState) -> DataPlane:
    limits = RequestLimits(
        request_timeout_s=settings.request_timeout_s,
        max_upload_bytes=settings.max_upload_bytes,
        max_images_per_request=settings.max_images_per_request,
        allowed_formats=frozenset(settings.allowed_formats),
    )
    return DataPlane(state.get_model, limits, state.metrics, state.parse_pool, observers=[state.statistics])


def create_model_source(settings: Settings) -> ModelSource:
    """The repository folder, or ``model_path`` as a repository of one model."""
    if settings.model_repository is None:
        return SingleModelFile(settings.model_path)
    if "model_path" in settings.model_fields_set:
        logger.warning(
            "IMGSERVE_MODEL_PATH is not used: IMGSERVE_MODEL_REPOSITORY is set",
            extra={
                "model_path": str(settings.model_path),
                "model_repository": str(settings.model_repository),
            },
        )
    return DirectoryRepository(settings.model_repository)


def create_model_control(
    settings: Settings, state: AppState, load_engine: EngineLoader, decoder: Decoder
) -> ModelControl:
    options = LoadOptions(
        engine=EngineOptions(
            require_cuda=settings.require_cuda,
            intra_op_threads=settings.intra_op_threads,
            instances=settings.model_instances,
            execution_provider=settings.execution_provider,
            require_provider=settings.require_provider,
        ),
        batcher=batcher_config(settings),
        warmup_batch_sizes=settings.warmup_batch_sizes or [],
        max_loaded_versions=settings.max_loaded_versions,
        drain_timeout_s=settings.request_timeout_s + _DRAIN_MARGIN_S,
    )
    state.registry.default_name = settings.default_model
    source = create_model_source(settings)
    return ModelControl(
        source,
        state.registry,
        decoder,
        load_engine,
        options,
        observer=state.metrics,
        statistics=state.statistics,
    )


def check_default_model(settings: Settings, state: AppState) -> None:
    """``default_model`` must name a model that was loaded; the only model is the default."""
    names = state.registry.names()
    if settings.default_model is not None and settings.default_model not in names:
        raise EngineError(
            f"IMGSERVE_DEFAULT_MODEL={settings.default_model!r} is not a model this server loaded; "
            f"it serves {names}"
        )
    if settings.default_model is None and len(names) == 1:
        state.registry.default_name = names[0]  # stays the default, also while it is unloaded
    elif settings.default_model is None:
        logger.info("no default model: requests to /predict must name one", extra={"models": names})


def batcher_config(settings: Settings) -> BatcherConfig:
    return BatcherConfig(
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue_images=settings.max_queue_images,
        policy=settings.batch_policy,
    )


def track_model_metrics(state: AppState) -> None:
    metrics, lifecycle, registry = state.metrics, state.lifecycle, state.registry
    metrics.track_served(registry.models, live_session_count)
    metrics.track_queue(
        lambda: sum(model.queued_images for model in registry.all_models()),
        lambda: sum(model.running_images for model in registry.all_models()),
    )
    metrics.ready.set_function(lambda: float(lifecycle.ready and not lifecycle.draining))
