"""Assertions and raw-socket HTTP helpers shared by the reliability tests."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from typing import Any

import httpx

# Every status the API may answer /predict with (what its OpenAPI schema must declare).
PREDICT_STATUSES = {200, 400, 401, 413, 415, 422, 503, 504}


def assert_error(response: httpx.Response, status: int, *needles: str) -> str:
    """The response is ``status`` with exactly ``{"detail": message}``, a clear message that
    mentions each needle (case-insensitive) and leaks no traceback or echoed markup."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, str) and len(detail) >= 10, body
    for needle in needles:
        assert needle.lower() in detail.lower(), (needle, detail)
    for leak in ("Traceback", 'File "', "<script", "/etc/passwd", "site-packages"):
        assert leak not in detail, detail
    return detail


def raw_request(port: int, head: bytes, body: bytes = b"", timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` over a
    fresh socket, return (status, response bytes). Stops sending once the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head + b"\r\n\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        return read_response(sock, timeout_s)


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int, bytes]:
    """Read until the server closes or a full Content-Length response has arrived."""
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        if _complete(data):
            break
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return (int(match.group(1)) if match else 0), data


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def response_json(data: bytes) -> Any:
    import json

    return json.loads(data.partition(b"\r\n\r\n")[2])
