"""A hostile gRPC client over raw HTTP/2 (the ``h2`` library): streams that announce a large
request message and send it all but one byte, then stall. grpc's own clients cannot stall in
the middle of a message."""

from __future__ import annotations

import select
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions

INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


class StallingClient:
    """One HTTP/2 connection to a gRPC port; ``open_streams`` starts the stalling streams."""

    def __init__(self, port: int, metadata: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.metadata = metadata or {}
        self.port = port
        self.pending: dict[int, bytes] = {}  # stream -> bytes still to send
        self.ended: dict[int, str] = {}  # stream -> grpc-status (or "reset") once it ended
        self.goaway_at: float | None = None  # time.monotonic() when the server's GOAWAY came
        self.closed = False
        self._flush()

    def open_streams(self, count: int, message_bytes: int) -> None:
        """``count`` ModelInfer calls, each announcing a ``message_bytes`` message and sending
        it all but its last byte."""
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", INFER_PATH),
            (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *self.metadata.items(),
        ]
        body = b"\x00" + message_bytes.to_bytes(4, "big") + b"\x0a" * (message_bytes - 1)
        for _ in range(count):
            stream = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream, headers)
            self.pending[stream] = body
        self._flush()

    def pump(self, seconds: float) -> int:
        """Send what the flow-control windows allow and read the server's frames for
        ``seconds``; returns the bytes of request data sent meanwhile."""
        sent, end = 0, time.monotonic() + seconds
        while time.monotonic() < end and not self.closed:
            for stream, rest in list(self.pending.items()):
                if stream in self.ended:
                    self.pending.pop(stream)
                    continue
                try:
                    window = self.conn.local_flow_control_window(stream)
                except h2.exceptions.StreamClosedError:
                    self.pending.pop(stream)
                    continue
                size = min(window, len(rest), self.conn.max_outbound_frame_size)
                if size > 0:
                    self.conn.send_data(stream, rest[:size])
                    self.pending[stream] = rest[size:]
                    sent += size
            self._flush()
            self._read()
        return sent

    def _read(self) -> None:
        if not select.select([self.sock], [], [], 0.002)[0]:
            return
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # h2 takes no frame after a GOAWAY (the GOAWAY may be in this very read): what is
            # left to see is the close.
            if self.conn.state_machine.state != h2.connection.ConnectionState.CLOSED:
                raise
            self.goaway_at = self.goaway_at or time.monotonic()
            return
        for event in events:
            if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                status = dict(event.headers).get(b"grpc-status")
                if status is not None:
                    self.ended[event.stream_id] = status.decode()
            elif isinstance(event, h2.events.StreamReset):
                self.ended.setdefault(event.stream_id, "reset")
            elif isinstance(event, h2.events.ConnectionTerminated):
                # GOAWAY: the calls in progress may still finish; the server closes the
                # connection once they have (or its grace is over).
                self.goaway_at = self.goaway_at or time.monotonic()
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def close(self) -> None:
        self.sock.close()
