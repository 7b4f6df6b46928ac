"""What ``Client`` and ``AsyncClient`` share: settings, request shapes and response parsing.

The two differ only where one blocks and the other awaits (sending, sleeping, running the
workers of ``predict_many``); every decision is made here or in ``retry`` and ``images``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sized
from typing import Any

import httpx

from imgserve_client.errors import APIError, ProtocolError
from imgserve_client.images import ImageInput, Loaded, PackSource, images_per_request, multipart_body
from imgserve_client.retry import Attempts, RetryPolicy, RetryStats
from imgserve_client.types import Limits, ModelInfo, Prediction, parse_models, parse_predictions

__version__ = "0.1.0"

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0  # the server's own deadline is 30 s by default: let it answer first


class ClientBase:
    """Settings and the protocol's shapes; see :class:`imgserve_client.Client` for the arguments."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        max_total_wait: float,
        clock: Callable[[], float],
        random: Callable[[], float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = RetryPolicy(max_retries=max_retries, max_total_wait=max_total_wait)
        self.stats = RetryStats()
        self._api_key = api_key
        self._timeout = timeout
        self._clock = clock
        self._random = random
        self._model: ModelInfo | None = None
        self._model_known = False

    def _http_options(self, transport: Any) -> dict[str, Any]:
        headers = {"User-Agent": f"imgserve-client/{__version__} httpx/{httpx.__version__}"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": self._timeout,
            # One keep-alive connection per worker of predict_many: closing and reopening
            # connections would cost more than the requests.
            "limits": httpx.Limits(max_connections=None, max_keepalive_connections=256),
        }
        if transport is not None:
            options["transport"] = transport
        return options

    def _attempts(self) -> Attempts:
        return Attempts(self.policy, self._clock, self._random, self.stats)

    @staticmethod
    def _predict_args(pack: list[Loaded], top_k: int, explain: bool = False) -> dict[str, Any]:
        body, content_type = multipart_body(pack)
        params: dict[str, Any] = {"top_k": top_k}
        if explain:
            params["explain"] = "true"
        return {"params": params, "content": body, "headers": {"Content-Type": content_type}}

    @staticmethod
    def _predictions(response: httpx.Response, expected: int) -> list[Prediction]:
        predictions = parse_predictions(_json(response))
        if len(predictions) != expected:
            raise ProtocolError(f"sent {expected} images, got {len(predictions)} predictions")
        return predictions

    @staticmethod
    def _models(response: httpx.Response) -> list[ModelInfo]:
        return parse_models(_json(response))

    def _remember_model(self, models: list[ModelInfo] | None) -> ModelInfo | None:
        """The served model whose limits ``predict_many`` follows (the first; ``None``: unknown)."""
        self._model = models[0] if models else None
        self._model_known = True
        return self._model

    @staticmethod
    def _unknown_models(error: APIError) -> list[ModelInfo] | None:
        """A server (or a proxy) without ``/v1/models``: carry on without its limits."""
        if error.status in (404, 405):
            return None
        raise error

    @staticmethod
    def _check_top_k(top_k: int, model: ModelInfo | None) -> None:
        classes = model.num_classes if model is not None else math.inf
        if not 1 <= top_k <= classes:
            raise ValueError(f"top_k must be between 1 and {classes} (the model's classes), got {top_k}")

    @staticmethod
    def _pack_source(
        images: Iterable[ImageInput], concurrency: int, per_request: int | None, model: ModelInfo | None
    ) -> PackSource:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if isinstance(images, str | bytes | os.PathLike):
            raise TypeError("predict_many takes a collection of images; for one image call predict")
        limits: Limits | None = model.limits if model is not None else None
        if per_request is None:
            total = len(images) if isinstance(images, Sized) else None
            per_request = images_per_request(model, concurrency, total)
        elif limits is not None and not 1 <= per_request <= limits.max_images_per_request:
            raise ValueError(
                f"images_per_request must be between 1 and the server's max_images_per_request "
                f"({limits.max_images_per_request}), got {per_request}"
            )
        return PackSource(images, per_request, _max_upload_bytes(model))


def _max_upload_bytes(model: ModelInfo | None) -> int | None:
    return model.limits.max_upload_bytes if model is not None else None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ProtocolError(
            f"{response.request.method} {response.request.url.path} answered {response.status_code} "
            f"with a body that is not JSON: {response.text[:200]!r}"
        ) from exc
