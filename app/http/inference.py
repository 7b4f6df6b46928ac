"""One inference request over HTTP, the same for every HTTP front end: the dataplane's whole
path (:meth:`app.dataplane.DataPlane.run`), with the request's image count for the access log
and the client's disconnect watched (a client that leaves has its queued images dropped)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from starlette.requests import Request

from app.dataplane import DataPlane, InferenceRequest, InferenceResult, Read
from app.http.body import read_body
from app.http.disconnect import client_gone
from app.middleware import get_request_context
from app.state import AppState

P = TypeVar("P")
# (body, head, dataplane) -> (the whole request, what the front end needs to render the answer)
ParseBody = Callable[[bytes, InferenceRequest, DataPlane], tuple[InferenceRequest, P]]


def request_dataplane(request: Request) -> DataPlane:
    state: AppState = request.app.state.imgserve
    return state.get_dataplane()


async def infer(request: Request, head: InferenceRequest, read: Read[P]) -> tuple[InferenceResult, P]:
    """Classify what ``read(head)`` reads from the request's body, its own way."""
    dataplane = request_dataplane(request)
    return await dataplane.run(
        head, read, record=get_request_context(request.scope), gone=client_gone(request)
    )


async def infer_body(
    request: Request, head: InferenceRequest, parse: ParseBody[P]
) -> tuple[InferenceResult, P]:
    """:func:`infer` for a body that is one document: read whole under the byte limit (gzip and
    deflate bodies too), then ``parse(body, head, dataplane)`` on the parse thread."""
    dataplane = request_dataplane(request)

    async def read(head: InferenceRequest) -> tuple[InferenceRequest, P]:
        body = await read_body(request, dataplane.limits.max_upload_bytes)
        return await dataplane.parse(parse, body, head, dataplane)

    return await infer(request, head, read)
