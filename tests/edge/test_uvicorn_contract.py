"""The parts of uvicorn's httptools protocol that app/edge.py relies on are still there.

app/edge.py subclasses ``HttpToolsProtocol``: it overrides its hooks (one private,
``_start_asgi_task``; HOOKS lists them) and reads or writes its attributes and those of its
request cycle. A
uvicorn release may rename or drop any of them without notice; a bound against hostile
clients would then silently stop working in a fresh image. pyproject.toml pins uvicorn and
httptools exactly, and these tests say what to look at when the pins move: one request is
served by a plain HttpToolsProtocol on a real event loop, and each hook is seen called by
uvicorn with the attributes in place.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any

import httptools
import pytest
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.edge import EdgeProtocol

# hook -> its parameters after self, as app/edge.py calls super() with them
HOOKS = {
    "connection_made": ["transport"],
    "connection_lost": ["exc"],
    "data_received": ["data"],
    "on_headers_complete": [],
    "on_body": ["body"],
    "on_message_complete": [],
    "_start_asgi_task": ["cycle", "app"],
    "on_response_complete": [],
    # asyncio's write flow control, which uvicorn implements on its FlowControl
    "pause_writing": [],
    "resume_writing": [],
}
# The protocol's own attributes the edge uses, each with what it must be once a request's
# headers are in.
PROTOCOL_ATTRIBUTES: dict[str, Any] = {
    "transport": asyncio.Transport,
    "loop": asyncio.AbstractEventLoop,
    "flow": FlowControl,
    "parser": httptools.HttpRequestParser,
    "server_state": ServerState,
    "client": tuple,
    "pipeline": deque,
    "cycle": RequestResponseCycle,
    "headers": list,
    "url": bytes,
}
CYCLE_ATTRIBUTES = {
    "transport": asyncio.Transport,
    "response_started": bool,
    "response_complete": bool,
    "disconnected": bool,
    "message_event": asyncio.Event,
}
STATUSES_THE_EDGE_SENDS = [400, 408, 413, 431, 503]


def test_every_hook_the_edge_overrides_is_uvicorns_with_the_same_parameters() -> None:
    for name, parameters in HOOKS.items():
        assert name in vars(HttpToolsProtocol), f"uvicorn's HttpToolsProtocol no longer defines {name}"
        signature = inspect.signature(getattr(HttpToolsProtocol, name))
        assert list(signature.parameters)[1:] == parameters, f"{name}{signature}"
    overridden = {n for n in vars(EdgeProtocol) if n in vars(HttpToolsProtocol) and not n.startswith("__")}
    assert overridden == set(HOOKS), "app/edge.py overrides a hook this test does not list"
    # The edge's __init__ passes everything through; uvicorn builds it with these keywords.
    assert {"config", "server_state", "app_state"} <= inspect.signature(HttpToolsProtocol).parameters.keys()


def test_the_private_helpers_and_status_lines_are_there() -> None:
    assert callable(HttpToolsProtocol._unset_keepalive_if_required)
    assert inspect.signature(HttpToolsProtocol._unset_keepalive_if_required).parameters.keys() == {"self"}
    for status in STATUSES_THE_EDGE_SENDS:
        assert STATUS_LINE[status].startswith(b"HTTP/1.1 %d " % status)
    assert inspect.isfunction(FlowControl.pause_reading)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_uvicorn_calls_each_hook_with_the_attributes_in_place() -> None:
    calls: list[str] = []
    seen: dict[str, Any] = {}

    class Spy(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            calls.append("connection_made")
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            calls.append("data_received")
            super().data_received(data)

        def on_headers_complete(self) -> None:
            calls.append("on_headers_complete")
            super().on_headers_complete()
            seen.update({name: getattr(self, name) for name in PROTOCOL_ATTRIBUTES})
            seen["total_requests"] = self.server_state.total_requests
            seen["read_paused"] = self.flow.read_paused
            seen["http_version"] = self.parser.get_http_version()

        def on_body(self, body: bytes) -> None:
            calls.append("on_body")
            super().on_body(body)

        def on_message_complete(self) -> None:
            calls.append("on_message_complete")
            super().on_message_complete()

        def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
            calls.append("_start_asgi_task")
            seen["cycle_in_pipeline"] = any(entry[0] is cycle for entry in self.pipeline)
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            calls.append("on_response_complete")
            seen.update({f"cycle.{name}": getattr(self.cycle, name) for name in CYCLE_ATTRIBUTES})
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            calls.append("connection_lost")
            super().connection_lost(exc)

    async def serve_one() -> None:
        config = Config(app=hello, http=Spy, lifespan="off", log_level="warning")
        config.load()
        protocol = Spy(config=config, server_state=ServerState(), app_state={})
        transport = FakeTransport()
        protocol.connection_made(transport)
        # write flow control: uvicorn's FlowControl follows the transport's pause and resume
        protocol.pause_writing()
        assert protocol.flow.write_paused is True
        protocol.resume_writing()
        assert protocol.flow.write_paused is False
        protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        for _ in range(100):
            if "on_response_complete" in calls:
                break
            await asyncio.sleep(0.01)
        protocol.connection_lost(None)
        assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n"), bytes(transport.written)

    asyncio.run(serve_one())
    assert calls == [
        "connection_made",
        "data_received",
        "on_headers_complete",
        "_start_asgi_task",
        "on_body",
        "on_message_complete",
        "on_response_complete",
        "connection_lost",
    ]
    for name, kind in PROTOCOL_ATTRIBUTES.items():
        assert isinstance(seen[name], kind), (name, seen[name])
    assert seen["url"] == b"/" and (b"host", b"x") in seen["headers"]
    assert seen["cycle_in_pipeline"] is False  # a lone request runs at once, not queued
    assert isinstance(seen["total_requests"], int) and seen["read_paused"] is False
    assert seen["http_version"] == "1.1"
    for name, kind in CYCLE_ATTRIBUTES.items():
        assert isinstance(seen[f"cycle.{name}"], kind), name
    assert seen["cycle.response_complete"] is True


def test_the_edge_adds_no_attribute_uvicorn_now_uses() -> None:
    # A uvicorn release that starts using a name the edge sets (self._running, ...) would
    # break both quietly.
    edge_names = set(inspect.getsource(EdgeProtocol.__init__).split("self.")[1:])
    edge_attributes = {name.split(" ")[0].split(":")[0] for name in edge_names}
    uvicorn_source = inspect.getsource(HttpToolsProtocol) + inspect.getsource(RequestResponseCycle)
    clashes = sorted(a for a in edge_attributes if a.isidentifier() and f"self.{a}" in uvicorn_source)
    assert not clashes, clashes


pytestmark = pytest.mark.filterwarnings("error")
