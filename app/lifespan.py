"""Start-up and shut-down: load and warm the model, start the decoder, batchers and the gRPC server,
stop them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app.config import Settings
from app.inference.batcher import BatcherConfig
from app.inference.engine import Engine, EngineOptions
from app.inference.model import Decoder, ServedModel
from app.inference.preprocess import ImageLimits, configure_pillow
from app.state import AppState
from app.v2.grpc_server import start_grpc_server

logger = logging.getLogger(__name__)

EngineLoader = Callable[[Path, EngineOptions], Engine]


def create_lifespan(state: AppState, load_engine: EngineLoader) -> Callable[[FastAPI], Any]:
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_pillow(settings.max_image_pixels)
        decoder = create_decoder(settings, state)
        model = await load_model(settings, state, load_engine, decoder)
        decoder.start()
        model.start()
        state.registry.add(model)
        track_model_metrics(state, model)
        state.lifecycle.ready = True
        grpc_server = await start_grpc_server(state, app.version) if settings.grpc_port else None
        try:
            yield
        finally:
            state.lifecycle.ready = False
            if grpc_server is not None:  # its calls in flight finish before the batcher stops
                await grpc_server.stop()
            await model.stop(timeout_s=max(0.5, state.lifecycle.seconds_left(settings.drain_timeout_s)))
            decoder.stop()
            logger.info("models stopped")

    return lifespan


def create_decoder(settings: Settings, state: AppState) -> Decoder:
    limits = ImageLimits(
        allowed_formats=frozenset(settings.allowed_formats), max_image_pixels=settings.max_image_pixels
    )
    return Decoder(settings.decode_threads, limits, observer=state.metrics)


async def load_model(
    settings: Settings, state: AppState, load_engine: EngineLoader, decoder: Decoder
) -> ServedModel:
    """Load the ONNX file and warm it up, off the event loop."""
    options = EngineOptions(require_cuda=settings.require_cuda, intra_op_threads=settings.intra_op_threads)
    engine = await asyncio.to_thread(load_engine, settings.model_path, options)
    timings = await asyncio.to_thread(engine.warm_up, settings.warmup_batch_sizes or [])
    logger.info(
        "model ready",
        extra={
            "model": engine.card.name,
            "model_version": engine.card.version,
            "execution_provider": engine.execution_provider,
            "warmup_ms": {size: round(s * 1000, 1) for size, s in timings.items()},
        },
    )
    return ServedModel(engine, batcher_config(settings), decoder, observer=state.metrics)


def batcher_config(settings: Settings) -> BatcherConfig:
    return BatcherConfig(
        max_batch_size=settings.max_batch_size,
        max_delay_ms=settings.max_delay_ms,
        max_queue_images=settings.max_queue_images,
        policy=settings.batch_policy,
    )


def track_model_metrics(state: AppState, model: ServedModel) -> None:
    metrics, lifecycle = state.metrics, state.lifecycle
    metrics.model.info({"name": model.name, "version": model.version, "provider": model.execution_provider})
    metrics.track_queue(lambda: model.queued_images, lambda: model.running_images)
    metrics.ready.set_function(lambda: float(lifecycle.ready and not lifecycle.draining))
