"""What every call on the gRPC port gets, whether the service answers it or the port's bounds
refuse it first (``app/v2/grpc_bounds.py``): its request id (the client's ``x-request-id``
metadata when it is well-formed, else a new one), one access-log line and the request metrics,
as HTTP requests get from ``app/middleware.py``."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from app.dataplane import request_id_or_new
from app.logs import log_access
from app.metrics import Metrics

PROTOCOL = "v2_grpc"
Metadata = Mapping[str, str | bytes]


def invocation_metadata(context: grpc.aio.ServicerContext) -> Metadata:
    """A call's metadata as a mapping (a key sent twice: its last value)."""
    return dict(context.invocation_metadata() or ())


def metadata_text(metadata: Metadata, key: str) -> str | None:
    value = metadata.get(key)
    return value.decode("latin-1") if isinstance(value, bytes) else value


def call_request_id(metadata: Metadata) -> str:
    value = metadata.get("x-request-id")
    return request_id_or_new(value.encode("latin-1", "replace") if isinstance(value, str) else value)


def record_call(
    metrics: Metrics, method: str, request_id: str, code: str, images: int, seconds: float, peer: str
) -> None:
    """The access-log line and request metrics of one call (``method``: its full name)."""
    metrics.observe_request(method, "POST", code, PROTOCOL, seconds)
    log_access(
        request_id=request_id,
        method="POST",
        path=method,
        route=method,
        protocol=PROTOCOL,
        status=code,
        images=images,
        seconds=seconds,
        client=peer,
    )
