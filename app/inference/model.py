"""One served model version: its card, its ONNX Runtime session, its batcher; images in, labels out.

``ServedModel.classify`` is the whole inference core as a front end sees it: named image bytes
and a ``top_k`` in, a labelled :class:`Classification` per image out, or one of the core's
errors (``app.inference.errors``). Decoding runs in a thread pool shared by every model of
the process (:class:`Decoder`); the model runs on its batcher's own thread. Nothing here
knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.inference.batcher import Batcher, BatcherConfig
from app.inference.engine import Engine
from app.inference.errors import InvalidRequestError, NotReadyError
from app.inference.postprocess import Classification, classify
from app.inference.preprocess import ImageLimits, preprocess
from model_card import ModelCard, Preprocessing

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5


class InferenceObserver(Protocol):
    def observe_batch(self, size: int, seconds: float) -> None: ...
    def observe_preprocess(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class NamedImage:
    """Encoded image bytes and how error messages refer to them."""

    name: str
    data: bytes


class Decoder:
    """The decode and preprocess thread pool, one per process; start/stop from a lifespan."""

    def __init__(self, threads: int, limits: ImageLimits, observer: InferenceObserver | None = None) -> None:
        self.threads = threads
        self.limits = limits
        self._observer = observer
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="decode")

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def decode_all(self, images: Sequence[NamedImage], spec: Preprocessing) -> list[np.ndarray]:
        """Every image as the graph's uint8 HWC array, in order; the first bad image's error."""
        if self._pool is None:
            raise NotReadyError("the server is shutting down")
        loop = asyncio.get_running_loop()
        tasks = [loop.run_in_executor(self._pool, self._decode, image, spec) for image in images]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def _decode(self, image: NamedImage, spec: Preprocessing) -> np.ndarray:
        start = time.perf_counter()
        array = preprocess(image.data, spec, self.limits, image.name)
        if self._observer is not None:
            self._observer.observe_preprocess(time.perf_counter() - start)
        return array


class ServedModel:
    """One loaded model version; ``start``/``stop`` its batcher from a lifespan.

    It is served as ``name`` and ``version`` (a repository's folder names; by default the
    card's). ``drain`` retires it: the requests it has admitted finish on it, then its batcher
    stops and nothing here holds the session any more.
    """

    def __init__(
        self,
        engine: Engine,
        batcher_config: BatcherConfig,
        decoder: Decoder,
        observer: InferenceObserver | None = None,
        *,
        name: str | None = None,
        version: str | None = None,
    ) -> None:
        self.engine = engine
        self.decoder = decoder
        self.name = name or engine.card.name
        self.version = version or engine.card.version
        on_batch = observer.observe_batch if observer is not None else None
        self.batcher = Batcher(engine.run, batcher_config, on_batch=on_batch)
        self._in_flight = 0  # classify calls that have started and not returned
        self._idle = asyncio.Event()
        self._idle.set()
        self._unloaded = False

    @property
    def card(self) -> ModelCard:
        return self.engine.card

    @property
    def execution_provider(self) -> str:
        """The ONNX Runtime provider that runs the model."""
        return self.engine.execution_provider

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    @property
    def batching(self) -> BatcherConfig:
        return self.batcher.config

    @property
    def queued_images(self) -> int:
        """Images admitted and not yet running (decoding or waiting for a batch)."""
        return self.batcher.queued_images

    @property
    def running_images(self) -> int:
        return self.batcher.running_images

    @property
    def default_top_k(self) -> int:
        """5, or every class when the model has fewer."""
        return min(DEFAULT_TOP_K, self.card.num_classes)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self, timeout_s: float) -> None:
        await self.batcher.stop(timeout_s)

    @property
    def in_flight_requests(self) -> int:
        return self._in_flight

    async def drain(self, timeout_s: float) -> None:
        """Let every request already in ``classify`` finish here, then stop the batcher.

        The caller has made sure no new request can find this model (a registry no longer
        resolves it); what is left past ``timeout_s`` fails as the batcher's stop fails it.
        """
        # A request that resolved this model just before the swap may have scheduled its
        # classify task without it having run yet: let every task already scheduled start.
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            logger.error(
                "model %s version %s still had %d requests after %.1f s of draining",
                self.name,
                self.version,
                self._in_flight,
                timeout_s,
            )
        self._unloaded = True
        await self.batcher.stop(timeout_s=1.0)

    def check_top_k(self, top_k: int) -> None:
        """Raise ``InvalidRequestError`` unless 1 <= top_k <= the number of classes."""
        classes = self.card.num_classes
        if not 1 <= top_k <= classes:
            raise InvalidRequestError(
                f"top_k must be between 1 and {classes} (the number of classes), got {top_k}"
            )

    async def classify(self, images: Sequence[NamedImage], top_k: int) -> list[Classification]:
        """The labelled top-k (and the probabilities) of each image, in order; all or nothing.

        Raises the core's typed error of the first bad image (in request order),
        ``QueueFullError`` when the queue has no room, ``ModelFailedError`` when the model fails.
        """
        self.check_top_k(top_k)
        if self._unloaded:
            raise NotReadyError(f"model {self.name!r} version {self.version!r} was unloaded; retry")
        self._in_flight += 1
        self._idle.clear()
        try:
            reservation = self.batcher.reserve(len(images))
            with reservation:
                arrays = await self.decoder.decode_all(images, self.card.preprocessing)
                rows = await self.batcher.infer(arrays, reservation)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        labels = self.card.labels
        return [classify(row, labels, top_k) for row in rows]
