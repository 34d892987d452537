"""A fake Conversions API Gateway over real HTTP on loopback, for the tests and the benchmark.

It answers ``POST /capi/{dataset_id}/events`` with ``202`` when the access key matches,
records every request and the events it accepted, and plays programmable faults::

    with FakeGateway(access_key="k") as fake:
        fake.fail_next(1, status=500)
        ...
        assert max(fake.accepted_event_ids().values()) == 1   # no event delivered twice
"""

from __future__ import annotations

import collections
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from waconv.graph.fake import LoopbackFake, LoopbackServer

DEFAULT_ACCESS_KEY = "test-gateway-key"  # the fake's well-known test key, not a secret

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class GatewayFault:
    status: int | None  # None: close the connection without answering
    body: str = '{"error": "fault"}'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: LoopbackServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        status, body = self.server.fake._answer(self.path, raw)
        if status is None:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the benchmark pushes thousands of requests through."""


class FakeGateway(LoopbackFake):
    handler = _Handler
    thread_name = "fake-gateway"

    def __init__(
        self,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        host: str = "127.0.0.1",
        latency: float = 0.0,
    ) -> None:
        super().__init__(host)
        self.access_key = access_key
        self.latency = latency  # seconds each answer waits (the fleet benchmark)
        self.lock = threading.Lock()
        self.requests: list[JsonObject] = []  # path and JSON body of each request
        self.events: list[JsonObject] = []  # accepted events, with the request's dataset
        self._faults: collections.deque[GatewayFault] = collections.deque()

    def fail_next(self, n: int = 1, *, status: int | None = 500, body: str | None = None) -> None:
        """The next ``n`` requests answer ``status`` with ``body`` (None: connection closed
        without an answer)."""
        fault = GatewayFault(status, body if body is not None else '{"error": "fault"}')
        with self.lock:
            self._faults.extend([fault] * n)

    def accepted_event_ids(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(str(e["event_id"]) for e in self.events)

    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def _answer(self, path: str, raw: bytes) -> tuple[int | None, str]:
        if self.latency:
            self._stopping.wait(self.latency)  # stopping answers at once
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self.lock:
            self.requests.append({"path": path, "json": body})
            fault = self._faults.popleft() if self._faults else None
        if fault is not None:
            return fault.status, fault.body
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "capi" or parts[2] != "events":
            return 404, '{"error": "unknown path"}'
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return 400, '{"error": "body must be {accessKey, data}"}'
        if body.get("accessKey") != self.access_key:
            return 401, '{"error": "invalid access key"}'
        with self.lock:
            for event in body["data"]:
                self.events.append({**event, "_dataset_id": parts[1]})
        return 202, '{"status": "accepted"}'
