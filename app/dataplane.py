"""The one request path under every front end: wire -> front end -> DataPlane -> model -> render.

A front end parses its wire format into an :class:`InferenceRequest` and renders the
:class:`InferenceResult` (or the protocol-free error, ``app.inference.errors``) in its own
terms; everything that must be the same whatever the protocol happens here, once:

- which model answers: resolved before the body is read (an unknown model or a bad explicit
  ``top_k`` costs no upload) and again after, with no ``await`` between that second lookup and
  ``classify``, so a version swapped in while the body was read answers and a retired one
  never admits a request (docs/ARCHITECTURE.md, hot swap);
- the one ``top_k`` rule, the one image-count check, and explanations (refused unless the
  model gives them);
- the request deadline over reading, parsing and classifying;
- parsing off the event loop, on the parse pool (one thread: parsers hold the GIL);
- cancellation: a client that leaves (``gone``) or a cancelled call drops its queued images;
- the image count for the access log, the per-protocol image metric, and each request's
  outcome for the :class:`RequestObserver` s (per-model statistics).

KServe's ``kserve/protocol/dataplane.py`` is the model: one ``DataPlane`` under the REST and
gRPC handlers. Unlike KServe's, ours also owns admission, the deadline and cancellation.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from app.inference.deadline import request_deadline
from app.inference.errors import (
    BodyTooLargeError,
    ClientGoneError,
    InvalidRequestError,
)
from app.inference.model import NamedImage, ServedModel
from app.inference.postprocess import Classification

T = TypeVar("T")
P = TypeVar("P")


@dataclass(frozen=True)
class InferenceRequest:
    """One request in no protocol's terms. ``top_k`` None: the model's default. Without images
    yet, it is the request's head: what is known before its body (:meth:`DataPlane.run`).

    ``top_k_parameter`` is what the client called it (``top_k``, ``classification``), for the
    error message; ``protocol`` names the front end for the metrics and the statistics.
    ``pixels``: images the client has already decoded and resized (uint8 [N, H, W, 3]), sent
    instead of encoded ``images`` (``ServedModel.classify_pixels``).
    """

    images: Sequence[NamedImage] = ()
    model_name: str | None = None
    model_version: str | None = None
    top_k: int | None = None
    explain: bool = False
    protocol: str = "rest"
    top_k_parameter: str = "top_k"
    pixels: np.ndarray | None = None

    @property
    def image_count(self) -> int:
        return len(self.pixels) if self.pixels is not None else len(self.images)


@dataclass(frozen=True)
class InferenceResult:
    """The version that answered and one classification per image, in request order."""

    model_name: str
    model_version: str
    classifications: list[Classification]


@dataclass(frozen=True)
class RequestOutcome:
    """How one request ended: ``error`` None is a success. ``model_version`` None: the request
    failed before a model was resolved."""

    protocol: str
    model_name: str | None
    model_version: str | None
    images: int
    duration_s: float
    error: BaseException | None


class RequestObserver(Protocol):
    """Told every request's outcome (per-model statistics: counts, failures, durations)."""

    def request_finished(self, outcome: RequestOutcome) -> None: ...


class ImageMetrics(Protocol):
    def count_images(self, protocol: str, count: int) -> None: ...


class ImageCount(Protocol):
    """Where a front end's access log reads the request's image count."""

    images: int


@dataclass(frozen=True)
class RequestLimits:
    """What one request may bring and take; built once, at start-up."""

    request_timeout_s: float
    max_upload_bytes: int
    max_images_per_request: int
    allowed_formats: frozenset[str]


ModelResolver = Callable[[str | None, str | None], ServedModel]
# A front end's body reader: the head in, the whole request and what it needs to render out.
Read = Callable[[InferenceRequest], Awaitable[tuple[InferenceRequest, P]]]


class DataPlane:
    """Built once in the lifespan and held by ``AppState``; every front end calls it."""

    def __init__(
        self,
        resolve: ModelResolver,
        limits: RequestLimits,
        metrics: ImageMetrics,
        parse_pool: Executor | None,
        observers: Sequence[RequestObserver] = (),
    ) -> None:
        self._resolve = resolve
        self.limits = limits
        self._metrics = metrics
        self.parse_pool = parse_pool
        self.observers = list(observers)

    # -- the parts a front end calls before the body ---------------------------------------------
    def model(
        self,
        name: str | None,
        version: str | None = None,
        top_k: int | None = None,
        top_k_parameter: str = "top_k",
        explain: bool = False,
    ) -> ServedModel:
        """The model that would answer now (``NotReadyError``, ``ModelNotFoundError``), with an
        explicit ``top_k`` and ``explain`` checked against it."""
        model = self._resolve(name, version)
        if top_k is not None:
            self.top_k(model, top_k, top_k_parameter)
        model.check_explain(explain)
        return model

    @staticmethod
    def top_k(model: ServedModel, requested: int | None, parameter: str = "top_k") -> int:
        """The classes per image asked for (1 to the model's ``max_top_k``), else its default."""
        if requested is None:
            return model.default_top_k
        if not 1 <= requested <= model.max_top_k:
            raise InvalidRequestError(f"{parameter} must be between {model.top_k_range()}, got {requested}")
        return requested

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[None]:
        async with request_deadline(self.limits.request_timeout_s):
            yield

    async def parse(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` on the parse thread, off the event loop (on it without a pool)."""
        if self.parse_pool is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(self.parse_pool, function, *args)

    def check_image_count(self, count: int) -> None:
        """The one bound on images per request; front ends also call it on a declared count
        before building anything proportional to it."""
        limit = self.limits.max_images_per_request
        if count > limit:
            raise BodyTooLargeError(f"more than {limit} images in one request (max_images_per_request)")

    # -- the request skeleton -------------------------------------------------------------------
    async def run(
        self,
        head: InferenceRequest,
        read: Read[P],
        *,
        record: ImageCount | None = None,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[InferenceResult, P]:
        """The whole path: the ``head`` (model, version, an explicit ``top_k``, ``explain``)
        checked first, then, under the deadline, ``read(head)`` (the front end reads and parses
        its body into the whole request and what it needs to render the answer) and :meth:`infer`."""
        start = time.perf_counter()
        self.model(head.model_name, head.model_version, head.top_k, head.top_k_parameter, head.explain)
        async with self.deadline():
            request, parsed = await read(head)
            return await self.infer(request, record=record, gone=gone, started_at=start), parsed

    async def infer(
        self,
        request: InferenceRequest,
        *,
        record: ImageCount | None = None,
        gone: Callable[[], Awaitable[bool]] | None = None,
        started_at: float | None = None,
    ) -> InferenceResult:
        """Classify ``request``'s images with the model that answers now.

        ``gone``: resolves True when the client has left (its queued images are then dropped
        and ``ClientGoneError`` raised), False when it can no longer tell. ``record``: gets the
        image count, for the access log."""
        start = time.perf_counter() if started_at is None else started_at
        model: ServedModel | None = None
        try:
            self.check_image_count(request.image_count)
            if record is not None:
                record.images = request.image_count
            # No await from here to classify: see the module docstring (hot swap).
            model = self._resolve(request.model_name, request.model_version)
            top_k = self.top_k(model, request.top_k, request.top_k_parameter)
            model.check_explain(request.explain)  # ExplainUnsupportedError: the card has no maps
            if request.pixels is not None:
                work = model.classify_pixels(request.pixels, top_k, request.explain)
            else:
                work = model.classify(request.images, top_k, request.explain)
            results = await _unless_gone(work, gone)
        except BaseException as exc:
            self._finished(request, model, start, exc)
            raise
        self._finished(request, model, start, None)
        self._metrics.count_images(request.protocol, len(results))
        return InferenceResult(model.name, model.version, results)

    def _finished(
        self, request: InferenceRequest, model: ServedModel | None, start: float, error: BaseException | None
    ) -> None:
        if not self.observers:
            return
        outcome = RequestOutcome(
            protocol=request.protocol,
            model_name=model.name if model is not None else request.model_name,
            model_version=model.version if model is not None else None,
            images=request.image_count,
            duration_s=time.perf_counter() - start,
            error=error,
        )
        for observer in self.observers:
            observer.request_finished(outcome)


async def _unless_gone(work: Awaitable[T], gone: Callable[[], Awaitable[bool]] | None) -> T:
    """Await ``work``, but cancel it (dropping its queued images) if the client goes away."""
    if gone is None:
        return await work
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        if watcher.result():
            work_task.cancel()
            raise ClientGoneError("the client disconnected before the result was ready")
        return await work_task
    finally:
        # Cancelling the work drops its images that have not run; wait for that to happen.
        work_task.cancel()
        watcher.cancel()
        await asyncio.gather(work_task, watcher, return_exceptions=True)


def request_id_or_new(value: bytes | None) -> str:
    """A client's request id when it is well-formed (1-128 safe characters), else a new one."""
    if value is not None and _VALID_REQUEST_ID.fullmatch(value):
        return value.decode("latin-1")
    return uuid.uuid4().hex


_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
