"""A fake clock and a fake server (httpx ``MockTransport``) for the client's unit tests."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from imgserve_client import AsyncClient, Client

NOW = 1_780_000_000.0  # the fake wall clock starts here (2026)

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeClock:
    """Wall-clock time that moves only when the client sleeps; every sleep is recorded."""

    now: float = NOW
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def uploaded_files(request: httpx.Request) -> list[tuple[str, bytes]]:
    """(filename, bytes) of each multipart part of a request, parsed by the standard library."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    return [(part.get_filename(), part.get_payload(decode=True)) for part in message.iter_parts()]


def predict_body(filenames: list[str | None], labels: list[str] | None = None) -> dict[str, Any]:
    """A ``/predict`` 200 body: image i's top class is ``labels[i]`` (default ``label-i``)."""
    labels = labels or [f"label-{i}" for i in range(len(filenames))]
    return {
        "model": "fake",
        "model_version": "7",
        "predictions": [
            {
                "filename": name,
                "top_k": [
                    {"index": 3, "label": label, "probability": 0.75},
                    {"index": 1, "label": "other", "probability": 0.25},
                ],
            }
            for name, label in zip(filenames, labels, strict=True)
        ],
    }


def models_body(
    max_images_per_request: int = 32,
    max_queue_images: int = 256,
    max_upload_bytes: int = 20 * 1024 * 1024,
    num_classes: int = 10,
    max_batch_size: int = 32,
) -> dict[str, Any]:
    """A ``/v1/models`` body with the fields the client reads (the real one has more)."""
    return {
        "models": [
            {
                "name": "fake",
                "version": "7",
                "num_classes": num_classes,
                "labels": [f"class-{i}" for i in range(num_classes)],
                "execution_provider": "CPUExecutionProvider",
                "batching": {"max_batch_size": max_batch_size, "max_queue_images": max_queue_images},
                "limits": {
                    "max_upload_bytes": max_upload_bytes,
                    "max_images_per_request": max_images_per_request,
                    "max_image_pixels": 40_000_000,
                    "allowed_formats": ["JPEG", "PNG"],
                },
            }
        ]
    }


def error(status: int, detail: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


def ok(request: httpx.Request) -> httpx.Response:
    """A 200 for any ``/predict``: one prediction per uploaded part."""
    return httpx.Response(200, json=predict_body([name for name, _ in uploaded_files(request)]))


def answers(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving these responses (or raising these errors) in turn, and the requests seen."""
    seen: list[httpx.Request] = []
    queue: Iterator[httpx.Response | Exception] = iter(responses)

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = next(queue)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle, seen


def sync_client(handler: Handler, clock: FakeClock, **options: Any) -> Client:
    options.setdefault("random", lambda: 0.0)
    return Client(
        "http://imgserve.test",
        transport=httpx.MockTransport(handler),
        clock=clock.time,
        sleep=clock.sleep,
        **options,
    )


class SyncFacade:
    """An ``AsyncClient`` driven through ``Client``'s blocking interface, so one test covers both."""

    def __init__(self, handler: Handler, clock: FakeClock, **options: Any) -> None:
        options.setdefault("random", lambda: 0.0)
        self._client = AsyncClient(
            "http://imgserve.test",
            transport=httpx.MockTransport(handler),
            clock=clock.time,
            sleep=clock.async_sleep,
            **options,
        )
        self.stats = self._client.stats

    def predict(self, image: Any, top_k: int = 5, **options: Any) -> Any:
        return asyncio.run(self._client.predict(image, top_k, **options))

    def models(self) -> Any:
        return asyncio.run(self._client.models())

    def health(self) -> bool:
        return asyncio.run(self._client.health())

    def ready(self) -> bool:
        return asyncio.run(self._client.ready())

    def predict_many(self, images: Any, **options: Any) -> list[Any]:
        async def collect() -> list[Any]:
            return [result async for result in self._client.predict_many(images, **options)]

        return asyncio.run(collect())


def make_client(kind: str, handler: Handler, clock: FakeClock, **options: Any) -> Any:
    """``Client`` or ``AsyncClient`` (behind the same blocking calls) on a fake transport."""
    if kind == "sync":
        return sync_client(handler, clock, **options)
    return SyncFacade(handler, clock, **options)


def json_of(request: httpx.Request) -> Any:
    return json.loads(request.content)
