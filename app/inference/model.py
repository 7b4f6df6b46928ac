"""One served model version: its card, its ONNX Runtime session, its batcher; images in, labels out.

``ServedModel.classify`` is the whole inference core as a front end sees it: named image bytes
and a ``top_k`` in, a labelled :class:`Classification` per image out, or one of the core's
errors (``app.inference.errors``). A request first takes room in its batcher's queue (refused
at once when there is none); admission then reads every image's header and counts the pixels
decoding will produce against a per-request and a process-wide budget; decoding
runs on threads shared by every model of the process (:class:`Decoder`), scheduled fairly
across requests; the model runs on its batcher's own thread. Nothing here
knows about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

import numpy as np

from app.inference.batcher import Batcher, BatcherConfig, retry_after_s
from app.inference.engine import Engine
from app.inference.errors import (
    DecodeBusyError,
    ExplainUnsupportedError,
    InvalidRequestError,
    ModelFailedError,
    NotReadyError,
    RequestTooLargeError,
)
from app.inference.postprocess import Classification, CropBox, Explanation, class_maps, classify
from app.inference.preprocess import (
    ImageCost,
    ImageLimits,
    crop_in_original,
    oriented_size,
    preprocess,
    probe,
)
from app.inference.scheduler import FairScheduler, Job
from app.inference.statistics import ExecutionObserver
from model_card import ModelCard, Preprocessing

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
# The most classes one answer lists per image, whatever the model: 32 images x 1,000 labelled
# scores would be a 2 MB answer for a request of a few KB. Every probability is still there
# for whoever wants it (v2's probs output, TF Serving's ?probabilities=true).
MAX_TOP_K = 100


class InferenceObserver(Protocol):
    def observe_batch(self, size: int, seconds: float) -> None: ...
    def observe_preprocess(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class NamedImage:
    """Encoded image bytes and how error messages refer to them."""

    name: str
    data: bytes


@dataclass(frozen=True)
class DecodeBudget:
    """Bounds on decode work, in pixels the decoder will produce (JPEG draft scaling counted).

    ``max_request_pixels``: one request's images together; more is refused for good.
    ``max_decoding_pixels``: every request's images admitted and not yet decoded, across the
    process; a request that would pass it is refused for now (retry later).
    ``light_reserved_pixels``: the part of ``max_decoding_pixels`` only light requests (at most
    ``HEAVY_IMAGE_PIXELS`` in all) may take: heavy requests, however many, cannot spend it, so
    a few clients looping heavy requests do not turn everyone else's requests away.
    """

    max_request_pixels: int
    max_decoding_pixels: int
    light_reserved_pixels: int = 0


# An image that decodes to more pixels than this is heavy: it takes the heavy lane, which
# leaves one decode thread to the rest (app.inference.scheduler). 4 MP is ~40-80 ms of decode
# on one core: a lossless 2000x2000 PNG; a 12-MP phone JPEG (draft mode) is far below it.
HEAVY_IMAGE_PIXELS = 4_000_000


@dataclass(eq=False)
class Admission:
    """A request's images, their costs and the pixels of the process budget they still hold."""

    images: Sequence[NamedImage]
    costs: list[ImageCost]
    spec: Preprocessing
    _decoder: Decoder = field(repr=False)
    held_pixels: int = 0

    def release(self, pixels: int | None = None) -> None:
        """Give back ``pixels`` (an image decoded), or everything still held."""
        amount = self.held_pixels if pixels is None else min(pixels, self.held_pixels)
        self.held_pixels -= amount
        self._decoder._release(amount)

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class Decoder:
    """The decode and preprocess threads, one set per process; start/stop from a lifespan.

    Admission (:meth:`admit`) reads every image's header in a decode thread, before any decoding:
    format allowlist and per-image pixel limit, then the request's pixels against the per-request
    and process budgets. :meth:`decode_all` then decodes the images on the fair scheduler
    (round-robin across requests, heavy images in their own lane). :meth:`decode_one` does both
    for a one-image request in a single job (one hand-off between threads fewer).
    """

    def __init__(
        self,
        threads: int,
        limits: ImageLimits,
        observer: InferenceObserver | None = None,
        budget: DecodeBudget | None = None,
    ) -> None:
        self.threads = threads
        self.limits = limits
        # Without budgets (tests of other parts): 32 images at the per-image limit.
        self.budget = budget or DecodeBudget(limits.max_image_pixels * 32, limits.max_image_pixels * 32)
        self._observer = observer
        self._scheduler = FairScheduler(threads)
        self._started = False
        self._decoding_pixels = 0
        self._budget_lock = threading.Lock()  # held from the event loop and from decode threads
        self._seconds_per_pixel = 0.0  # moving average over recent decodes

    @property
    def decoding_pixels(self) -> int:
        """Pixels admitted and not yet decoded, across the process."""
        return self._decoding_pixels

    def start(self) -> None:
        self._scheduler.start()
        self._started = True

    def stop(self) -> None:
        self._started = False
        self._scheduler.stop()

    async def admit(self, images: Sequence[NamedImage], spec: Preprocessing) -> Admission:
        """Read the headers and hold the images' pixels in the process budget, or raise the
        first bad image's error (in request order), ``RequestTooLargeError`` or ``DecodeBusyError``."""
        if not self._started:
            raise NotReadyError("the server is shutting down")
        [result] = await self._scheduler.run(object(), [Job(partial(self._probe_all, images, spec))])
        if isinstance(result, BaseException):
            raise result
        costs: list[ImageCost] = result
        return Admission(images, costs, spec, self, held_pixels=self._hold(costs))

    async def decode_one(self, image: NamedImage, spec: Preprocessing) -> np.ndarray:
        """``admit`` and ``decode_all`` of one image in a single job on a decode thread: the same
        checks, errors and budgets with one hand-off between threads instead of two. A heavy
        image is decoded in its lane, as ``decode_all`` would."""
        if not self._started:
            raise NotReadyError("the server is shutting down")
        [result] = await self._scheduler.run(object(), [Job(partial(self._decode_light, image, spec))])
        if isinstance(result, BaseException):
            raise result
        if isinstance(result, ImageCost):  # heavy: probed and admitted here, decoded in its lane
            with Admission([image], [result], spec, self, held_pixels=self._hold([result])) as admission:
                [result] = await self.decode_all(admission)
        array: np.ndarray = result
        return array

    def _decode_light(self, image: NamedImage, spec: Preprocessing) -> np.ndarray | ImageCost:
        """On a decode thread: probe, admit and decode ``image``, or only probe it if it is heavy."""
        [cost] = self._probe_all([image], spec)
        if cost.pixels > HEAVY_IMAGE_PIXELS:
            return cost
        held = self._hold([cost])
        try:
            return self._decode(image, spec, cost.pixels)
        finally:
            self._release(held)

    def _hold(self, costs: Sequence[ImageCost]) -> int:
        """Hold the images' pixels in the process budget (returned), or raise
        ``RequestTooLargeError`` / ``DecodeBusyError``. Safe from the event loop and decode threads."""
        total = sum(cost.pixels for cost in costs)
        limit = self.budget.max_request_pixels
        if total > limit:
            raise RequestTooLargeError(
                f"the request's {len(costs)} images decode to {total} pixels, over the budget of "
                f"{limit} pixels per request (max_request_pixels); send fewer or smaller images per request"
            )
        heavy = total > HEAVY_IMAGE_PIXELS
        room = self.budget.max_decoding_pixels - (self.budget.light_reserved_pixels if heavy else 0)
        with self._budget_lock:
            busy = self._decoding_pixels
            if busy + total > room:
                wait_s = retry_after_s(busy, self._seconds_per_pixel / self.threads)
                raise DecodeBusyError(
                    f"overloaded: {busy} pixels are waiting to be decoded and this request brings {total}, "
                    f"over the process budget of {self.budget.max_decoding_pixels} pixels "
                    f"(max_decoding_pixels){_less_reserve(heavy, self.budget.light_reserved_pixels)}; "
                    f"retry after {wait_s} s",
                    wait_s,
                )
            self._decoding_pixels += total
        return total

    def _release(self, pixels: int) -> None:
        with self._budget_lock:
            self._decoding_pixels -= pixels

    async def decode_all(self, admission: Admission) -> list[np.ndarray]:
        """Every image as the graph's uint8 HWC array, in order; the first bad image's error."""
        if not self._started:
            raise NotReadyError("the server is shutting down")
        jobs = [
            Job(
                partial(self._decode, image, admission.spec, cost.pixels),
                heavy=cost.pixels > HEAVY_IMAGE_PIXELS,
                on_done=partial(admission.release, cost.pixels),
            )
            for image, cost in zip(admission.images, admission.costs, strict=True)
        ]
        results = await self._scheduler.run(admission, jobs)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results

    def _probe_all(self, images: Sequence[NamedImage], spec: Preprocessing) -> list[ImageCost]:
        return [probe(image.data, spec, self.limits, image.name) for image in images]

    def _decode(self, image: NamedImage, spec: Preprocessing, pixels: int) -> np.ndarray:
        start = time.perf_counter()
        array = preprocess(image.data, spec, self.limits, image.name)
        seconds = time.perf_counter() - start
        # Written from decode threads without a lock: a lost sample only slows the average.
        self._seconds_per_pixel = _moving_average(self._seconds_per_pixel, seconds / pixels)
        if self._observer is not None:
            self._observer.observe_preprocess(seconds)
        return array


def _less_reserve(heavy: bool, reserved: int) -> str:
    if not heavy or not reserved:
        return ""
    light = HEAVY_IMAGE_PIXELS
    return f" less the {reserved} kept for requests of at most {light} pixels (light_decoding_pixels)"


def _moving_average(average: float, sample: float, weight: float = 0.2) -> float:
    return sample if average == 0.0 else average + weight * (sample - average)


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
        warmup_batch_sizes: Sequence[int] = (),
        statistics: ExecutionObserver | None = None,
    ) -> None:
        self.engine = engine
        self.warmup_batch_sizes = list(warmup_batch_sizes)
        self.decoder = decoder
        self.name = name or engine.card.name
        self.version = version or engine.card.version
        on_batch = observer.observe_batch if observer is not None else None
        self.batcher = Batcher(
            partial(engine.run, instance=True),
            batcher_config,
            on_batch=on_batch,
            instances=engine.instances,
            run_alone=engine.run,
            statistics=statistics,
        )
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
    def precision(self) -> str:
        """The arithmetic that runs: the card's precision, or fp32 where the provider has no bf16."""
        return self.engine.precision

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

    @property
    def max_top_k(self) -> int:
        """The number of classes, at most ``MAX_TOP_K``."""
        return min(self.card.num_classes, MAX_TOP_K)

    def top_k_range(self) -> str:
        """The accepted range in words: '1 and 6 (the number of classes)'."""
        classes = self.card.num_classes
        if classes <= MAX_TOP_K:
            return f"1 and {classes} (the number of classes)"
        return f"1 and {MAX_TOP_K} (the most one answer lists; the model has {classes} classes)"

    def check_top_k(self, top_k: int) -> None:
        """Raise ``InvalidRequestError`` unless 1 <= top_k <= ``max_top_k``."""
        if not 1 <= top_k <= self.max_top_k:
            raise InvalidRequestError(f"top_k must be between {self.top_k_range()}, got {top_k}")

    @property
    def explains(self) -> bool:
        """Whether this model answers with class activation maps when asked (its card says so)."""
        return self.engine.explains

    def check_explain(self, explain: bool) -> None:
        """Raise ``ExplainUnsupportedError`` when asked to explain a model that does not."""
        if explain and not self.explains:
            raise ExplainUnsupportedError(
                f"model {self.name!r} version {self.version!r} does not explain its answers (its card has "
                "no explanation: its head is not one the exporter can explain exactly); ask without explain"
            )

    async def classify(
        self, images: Sequence[NamedImage], top_k: int, explain: bool = False
    ) -> list[Classification]:
        """The labelled top-k (and the probabilities) of each image, in order; all or nothing.

        ``explain``: each answer also carries the class activation maps of its top-k classes
        and the crop's box in the original image (``ExplainUnsupportedError`` for a model
        that does not explain). Raises the core's typed error of the first bad image (in
        request order), ``RequestTooLargeError`` past the per-request pixel budget,
        ``DecodeBusyError`` when the process's pixel budget is spent, ``QueueFullError`` when
        the queue has no room, ``ModelFailedError`` when the model fails.
        """
        spec = self.card.preprocessing

        async def decoded() -> list[np.ndarray]:
            if len(images) == 1:  # header, budgets and pixels in one job
                return [await self.decoder.decode_one(images[0], spec)]
            with await self.decoder.admit(images, spec) as admission:
                return await self.decoder.decode_all(admission)

        async def boxes() -> list[CropBox]:
            return await asyncio.to_thread(self._crop_boxes, images)

        return await self._classify(len(images), decoded, top_k, explain, boxes)

    @property
    def pixels_shape(self) -> tuple[int, int, int]:
        """One preprocessed image as the batcher takes it: uint8 RGB, crop_size x crop_size, HWC."""
        size = self.card.preprocessing.crop_size
        return (size, size, 3)

    async def classify_pixels(
        self, pixels: np.ndarray, top_k: int, explain: bool = False
    ) -> list[Classification]:
        """Like :meth:`classify`, for images the client has already decoded and resized:
        ``pixels`` is uint8 ``[N, crop_size, crop_size, 3]`` RGB (:attr:`pixels_shape`), which
        goes to the batcher as it is (the card's mean and std are still applied by the graph).
        With ``explain``, the maps' box is the whole of each image (it is the crop)."""
        if pixels.dtype != np.uint8 or pixels.shape[1:] != self.pixels_shape or len(pixels) == 0:
            raise InvalidRequestError(
                f"pixels must be uint8 [N, {', '.join(map(str, self.pixels_shape))}] (RGB, N >= 1), "
                f"got {pixels.dtype} {list(pixels.shape)}"
            )
        size = float(self.card.preprocessing.crop_size)

        async def as_sent() -> list[np.ndarray]:
            return list(pixels)

        async def whole_images() -> list[CropBox]:
            return [CropBox(0.0, 0.0, size, size)] * len(pixels)

        return await self._classify(len(pixels), as_sent, top_k, explain, whole_images)

    async def _classify(
        self,
        count: int,
        arrays: Callable[[], Awaitable[list[np.ndarray]]],
        top_k: int,
        explain: bool,
        boxes: Callable[[], Awaitable[list[CropBox]]],
    ) -> list[Classification]:
        """The one path of :meth:`classify` and :meth:`classify_pixels`: ``count`` images whose
        ``arrays`` (the batcher's input) and crop ``boxes`` (asked only to explain) are made once
        room in the queue is held."""
        self.check_top_k(top_k)
        self.check_explain(explain)
        with self._classifying():
            # Room in the queue first: under overload a request is refused before any work
            # on it (a bad image sent then gets its own error when it comes back).
            with self.batcher.reserve(count) as reservation:
                rows = await self.batcher.infer(await arrays(), reservation, explain=explain)
            crops = await boxes() if explain else None
        if crops is None:
            return self._classified(rows, top_k)
        return [self._explained(row, box, top_k) for row, box in zip(rows, crops, strict=True)]

    @contextmanager
    def _classifying(self) -> Iterator[None]:
        """Count a classify call in flight (for :meth:`drain`); refuse one on an unloaded version."""
        if self._unloaded:
            raise NotReadyError(f"model {self.name!r} version {self.version!r} was unloaded; retry")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    def _classified(self, rows: Sequence[np.ndarray], top_k: int) -> list[Classification]:
        labels, classes = self.card.labels, self.card.num_classes
        return [classify(row[:classes], labels, top_k) for row in rows]

    def _crop_boxes(self, images: Sequence[NamedImage]) -> list[CropBox]:
        """Each image's crop in its original pixels (headers only: the images decoded already)."""
        spec = self.card.preprocessing
        limits = self.decoder.limits
        return [
            CropBox(*crop_in_original(*oriented_size(image.data, limits, image.name), spec))
            for image in images
        ]

    def _explained(self, row: np.ndarray, box: CropBox, top_k: int) -> Classification:
        probabilities, maps, map_classes = self.engine.split_row(row)
        result = classify(probabilities, self.card.labels, top_k)
        explanation = self.card.explanation
        if maps is None or map_classes is None or explanation is None:  # not reached: checked above
            raise ModelFailedError("the model returned no explanation")
        found = Explanation(explanation.method, box, class_maps(result.top_k, maps, map_classes))
        return replace(result, explanation=found)
