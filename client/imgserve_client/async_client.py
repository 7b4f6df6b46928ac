"""The asyncio twin of ``Client``: the same arguments, results, errors and retry policy."""

from __future__ import annotations

import asyncio
import random as random_module
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
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

# Files smaller than this (in all, per request) are read on the event loop: from the page cache
# that takes microseconds, less than handing the read to a thread and back. Bigger ones, and
# images whose size is unknown before reading (file objects, PIL images), go to a thread.
INLINE_READ_BYTES = 1 << 20


class AsyncClient(ClientBase):
    """``Client`` for asyncio: every method is a coroutine, ``predict_many`` an async iterator.

    ``sleep`` is an async function (``asyncio.sleep`` by default); the other arguments are
    :class:`imgserve_client.Client`'s. Reading image files runs in a worker thread.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 10,
        max_total_wait: float = 120.0,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        super().__init__(base_url, api_key, timeout, max_retries, max_total_wait, clock, random)
        self._sleep = sleep
        self._http = httpx.AsyncClient(**self._http_options(transport))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the API ------------------------------------------------------------------------------
    async def predict(self, image: ImageInput, top_k: int = 5, *, explain: bool = False) -> Prediction:
        """See :meth:`imgserve_client.Client.predict`."""
        data = await asyncio.to_thread(read_image, image)
        return (await self._post_predict([Loaded(image, image_name(image), data)], top_k, explain))[0]

    async def predict_many(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int = 5,
        concurrency: int = 8,
        images_per_request: int | None = None,
        explain: bool = False,
    ) -> AsyncGenerator[Result, None]:
        """See :meth:`imgserve_client.Client.predict_many`; ``concurrency`` tasks, one loop."""
        model = await self._limits_model()
        self._check_top_k(top_k, model)
        source = self._pack_source(images, concurrency, images_per_request, model)
        max_bytes = model.limits.max_upload_bytes if model is not None else None
        done: asyncio.Queue[list[Result] | Exception | None] = asyncio.Queue()

        async def work() -> None:
            try:
                while (pack := source.next_pack()) is not None:
                    done.put_nowait(await self._classify_pack(pack, top_k, max_bytes, explain))
            except Exception as exc:  # handed to the consumer
                done.put_nowait(exc)
            else:
                done.put_nowait(None)

        workers = [asyncio.create_task(work(), name=f"imgserve-client-{i}") for i in range(concurrency)]
        try:
            running = concurrency
            while running:
                item = await done.get()
                if item is None:
                    running -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    for result in item:
                        yield result
        finally:
            source.close()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def health(self) -> bool:
        """See :meth:`imgserve_client.Client.health`."""
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        """See :meth:`imgserve_client.Client.ready`."""
        return await self._probe("/readyz")

    async def models(self) -> list[ModelInfo]:
        """See :meth:`imgserve_client.Client.models`."""
        models = self._models(await self._request("GET", "/v1/models"))
        self._remember_model(models)
        return models

    # -- the machinery ----------------------------------------------------------------------------
    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        attempts = self._attempts()
        wait: float | None
        while True:
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                wait = attempts.after_error(exc)
            else:
                wait = attempts.after_response(response)
                if wait is None:
                    return response
            await self._sleep(wait)

    async def _probe(self, path: str) -> bool:
        try:
            return (await self._http.get(path)).status_code == 200
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"{type(exc).__name__} on {self.base_url}{path}: {exc}", 1) from exc

    async def _post_predict(self, pack: list[Loaded], top_k: int, explain: bool = False) -> list[Prediction]:
        response = await self._request("POST", "/predict", **self._predict_args(pack, top_k, explain))
        return self._predictions(response, len(pack))

    async def _limits_model(self) -> ModelInfo | None:
        if not self._model_known:
            models: list[ModelInfo] | None
            try:
                models = await self.models()
            except APIError as exc:
                models = self._unknown_models(exc)
            self._remember_model(models)
        return self._model

    async def _classify_pack(
        self, pack: list[Pending], top_k: int, max_bytes: int | None, explain: bool = False
    ) -> list[Result]:
        if sum(item.size or INLINE_READ_BYTES for item in pack) < INLINE_READ_BYTES:
            loaded, results = load_pack(pack, max_bytes)  # a few small files: cheaper than a thread hop
        else:
            loaded, results = await asyncio.to_thread(load_pack, pack, max_bytes)
        return results + await self._send_pack(loaded, top_k, explain) if loaded else results

    async def _send_pack(self, pack: list[Loaded], top_k: int, explain: bool = False) -> list[Result]:
        try:
            predictions = await self._post_predict(pack, top_k, explain)
        except ImgserveError as exc:
            if after_pack_error(exc, len(pack)) == "split":
                return [result for item in pack for result in await self._send_pack([item], top_k, explain)]
            return failed(pack, exc)
        return succeeded(pack, predictions)
