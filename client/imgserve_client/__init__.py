"""imgserve-client: classify images with an imgserve server, honouring its back-pressure.

    from imgserve_client import Client

    with Client("http://127.0.0.1:8000") as client:
        print(client.predict("cat.jpg").label)
        for result in client.predict_many(paths, concurrency=16):
            print(result.name, result.prediction.label if result.ok else result.error)

``AsyncClient`` is the asyncio twin. Retries (503, 429, connection errors; ``Retry-After``
honoured) follow :class:`RetryPolicy`; errors are :class:`ImgserveError` subclasses.
"""

from imgserve_client._base import __version__
from imgserve_client.async_client import AsyncClient
from imgserve_client.client import Client
from imgserve_client.errors import (
    APIError,
    ConnectionFailedError,
    ImageReadError,
    ImgserveError,
    ProtocolError,
    RejectedError,
    ServerBusyError,
    ServerError,
)
from imgserve_client.retry import RetryPolicy, RetryStats
from imgserve_client.types import (
    ClassMap,
    ClassScore,
    CropBox,
    Explanation,
    Limits,
    ModelInfo,
    Prediction,
    Result,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "ClassMap",
    "ClassScore",
    "Client",
    "ConnectionFailedError",
    "CropBox",
    "Explanation",
    "ImageReadError",
    "ImgserveError",
    "Limits",
    "ModelInfo",
    "Prediction",
    "ProtocolError",
    "RejectedError",
    "Result",
    "RetryPolicy",
    "RetryStats",
    "ServerBusyError",
    "ServerError",
    "__version__",
]
