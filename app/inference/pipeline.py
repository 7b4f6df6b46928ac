"""Bytes of images -> probabilities: admission, decoding in a thread pool, the batcher, the engine.

The HTTP surface (and, later, other protocols) hands this named image bytes; nothing here
knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.inference.batcher import Batcher, BatcherConfig
from app.inference.engine import Engine
from app.inference.preprocess import ImageLimits, preprocess


class PipelineObserver(Protocol):
    def observe_batch(self, size: int, seconds: float) -> None: ...
    def observe_preprocess(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class NamedImage:
    """Encoded image bytes and how error messages refer to them."""

    name: str
    data: bytes


class Pipeline:
    """Owns the decode pool and the batcher for one engine; start/stop from a lifespan."""

    def __init__(
        self,
        engine: Engine,
        batcher_config: BatcherConfig,
        limits: ImageLimits,
        decode_threads: int,
        observer: PipelineObserver | None = None,
        exact: bool = False,
    ) -> None:
        self.engine = engine
        self.limits = limits
        self._decode_threads = decode_threads
        self._observer = observer
        self._exact = exact
        on_batch = observer.observe_batch if observer is not None else None
        self.batcher = Batcher(engine.run, batcher_config, on_batch=on_batch)
        self._decode_pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._decode_pool = ThreadPoolExecutor(self._decode_threads, thread_name_prefix="decode")
        self.batcher.start()

    async def stop(self, timeout_s: float) -> None:
        await self.batcher.stop(timeout_s)
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def classify(self, images: Sequence[NamedImage]) -> list[np.ndarray]:
        """Probabilities [C] for each image, in order; all-or-nothing.

        Raises the typed error of the first bad image (in request order), ``QueueFullError``
        when the queue has no room, or ``InferenceError`` when the model fails.
        """
        reservation = self.batcher.reserve(len(images))
        with reservation:
            arrays = await self._decode_all(images)
            return await self.batcher.infer(arrays, reservation)

    async def _decode_all(self, images: Sequence[NamedImage]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        tasks = [loop.run_in_executor(self._decode_pool, self._decode, image) for image in images]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def _decode(self, image: NamedImage) -> np.ndarray:
        start = time.perf_counter()
        array = preprocess(
            image.data, self.engine.card.preprocessing, self.limits, image.name, exact=self._exact
        )
        if self._observer is not None:
            self._observer.observe_preprocess(time.perf_counter() - start)
        return array
