"""The blocking client: ``Client(base_url).predict("cat.jpg")``; ``predict_many`` runs threads."""

from __future__ import annotations

import queue
import random as random_module
import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any

import httpx

from imgserve_client._base import DEFAULT_TIMEOUT_S, DEFAULT_URL, ClientBase
from imgserve_client.errors import APIError, ConnectionFailedError, ImgserveError
from imgserve_client.images import (
    ImageInput,
    Loaded,
    Pending,
    after_pack_error,
    failed,
    image_name,
    load_pack,
    read_image,
    succeeded,
)
from imgserve_client.types import ModelInfo, Prediction, Result


class Client(ClientBase):
    """A client of one imgserve server.

    ``timeout``: seconds per HTTP attempt. ``max_retries``: retries after the first attempt,
    on 503, 429 and connection errors (never on other statuses). ``max_total_wait``: the most
    seconds one call waits between attempts in all. ``clock`` (wall-clock seconds, for
    ``Retry-After`` dates), ``sleep`` and ``random`` are injectable for tests; so is
    ``transport`` (an ``httpx`` transport such as ``httpx.MockTransport``).

    Retries made, by reason, and the seconds waited are counted in ``stats``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 10,
        max_total_wait: float = 120.0,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, max_total_wait, clock, random)
        self._sleep = sleep
        self._http = httpx.Client(**self._http_options(transport))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the API ------------------------------------------------------------------------------
    def predict(self, image: ImageInput, top_k: int = 5, *, explain: bool = False) -> Prediction:
        """The ``top_k`` most probable classes of one image (a path, bytes, a file object or a
        PIL image); raises an :class:`~imgserve_client.errors.ImgserveError` when it fails.
        ``explain``: the prediction also carries the model's class activation maps
        (:attr:`Prediction.explanation`); a model that does not explain answers 400."""
        pack = [Loaded(image, image_name(image), read_image(image))]
        return self._post_predict(pack, top_k, explain)[0]

    def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int = 5,
        concurrency: int = 8,
        images_per_request: int | None = None,
        explain: bool = False,
    ) -> Generator[Result, None, None]:
        """Classify many images with ``concurrency`` requests in flight; yields one
        :class:`Result` per image as each completes (not in input order).

        Several images go in one request when it pays (see ``images.images_per_request``),
        within the server's limits from ``/v1/models``. A bad image (unreadable, too large,
        not an image) gets a result with its error and does not stop the others; an error no
        image can get past (a wrong API key) is raised.
        """
        model = self._limits_model()
        self._check_top_k(top_k, model)
        source = self._pack_source(images, concurrency, images_per_request, model)
        max_bytes = model.limits.max_upload_bytes if model is not None else None
        done: queue.SimpleQueue[list[Result] | Exception | None] = queue.SimpleQueue()

        def work() -> None:
            try:
                while (pack := source.next_pack()) is not None:
                    done.put(self._classify_pack(pack, top_k, max_bytes, explain))
            except Exception as exc:  # handed to the caller's thread
                done.put(exc)
            else:
                done.put(None)

        # Daemon threads: a caller that stops reading must not wait out their retries.
        for index in range(concurrency):
            threading.Thread(target=work, name=f"imgserve-client-{index}", daemon=True).start()
        try:
            running = concurrency
            while running:
                item = done.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield from item
        finally:
            source.close()

    def health(self) -> bool:
        """Whether the server process is alive (``/healthz`` answers 200); not retried.

        Raises :class:`ConnectionFailedError` when nothing answers.
        """
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether the model is loaded and the server takes requests (``/readyz`` answers 200,
        not 503); not retried. Raises :class:`ConnectionFailedError` when nothing answers."""
        return self._probe("/readyz")

    def models(self) -> list[ModelInfo]:
        """The served models (``/v1/models``): card, execution provider, batching and limits."""
        models = self._models(self._request("GET", "/v1/models"))
        self._remember_model(models)
        return models

    # -- the machinery ----------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self._attempts()
        wait: float | None
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc)
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    return response
            self._sleep(wait)

    def _probe(self, path: str) -> bool:
        try:
            return self._http.get(path).status_code == 200
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"{type(exc).__name__} on {self.base_url}{path}: {exc}", 1) from exc

    def _post_predict(self, pack: list[Loaded], top_k: int, explain: bool = False) -> list[Prediction]:
        response = self._request("POST", "/predict", **self._predict_args(pack, top_k, explain))
        return self._predictions(response, len(pack))

    def _limits_model(self) -> ModelInfo | None:
        if not self._model_known:
            models: list[ModelInfo] | None
            try:
                models = self.models()
            except APIError as exc:
                models = self._unknown_models(exc)
            self._remember_model(models)
        return self._model

    def _classify_pack(
        self, pack: list[Pending], top_k: int, max_bytes: int | None, explain: bool = False
    ) -> list[Result]:
        loaded, results = load_pack(pack, max_bytes)
        return results + self._send_pack(loaded, top_k, explain) if loaded else results

    def _send_pack(self, pack: list[Loaded], top_k: int, explain: bool = False) -> list[Result]:
        try:
            predictions = self._post_predict(pack, top_k, explain)
        except ImgserveError as exc:
            if after_pack_error(exc, len(pack)) == "split":
                return [result for item in pack for result in self._send_pack([item], top_k, explain)]
            return failed(pack, exc)
        return succeeded(pack, predictions)
