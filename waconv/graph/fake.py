"""A fake Graph API over real HTTP on loopback, for the tests and the benchmark.

It answers the four calls :class:`~waconv.graph.client.GraphClient` makes, validates events the
way Meta does (one bad event rejects the whole batch, reference §3.6), records everything, and
plays programmable faults::

    with FakeGraph() as fake:
        client = GraphClient(fake.url, "v26.0")
        fake.fail_next(1, "rate_limit", code=17)
        ...
        assert max(fake.accepted_event_ids().values()) == 1   # no event delivered twice

Threading: the server runs in a daemon thread and serves each connection in its own daemon
thread (HTTP/1.1 keep-alive, so a client's ``requests.Session`` reuses its connections). All
recorded state sits behind ``fake.lock``; read the recordings through the methods, or hold the
lock while iterating the lists. Configuration attributes (``valid_tokens``, ``invalid_clids``,
``dataset_links`` ...) may be changed between requests.

The 7-day ``event_time`` rule reads :func:`waconv.clock.utcnow`, so freezegun drives it (it
patches time in every thread).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import itertools
import json
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from waconv import clock
from waconv.graph.client import MAX_EVENTS
from waconv.graph.errors import (
    BUSINESS_MESSAGING_EVENT_NAMES,
    SUBCODE_DATASET_NOT_LINKED,
    SUBCODE_DATASET_UNREACHABLE,
    SUBCODE_INVALID_CTWA_CLID,
    SUBCODE_INVALID_EVENT_NAME,
)

DEFAULT_TOKEN = "test-token"  # noqa: S105 - the fake's well-known test token, not a secret
EVENT_TIME_LIMIT_SECONDS = 7 * 24 * 3600  # Meta rejects a batch with an event older than 7 days
# The fake's subcode for "event_time more than 7 days old" (Meta's exact subcode is not
# documented; any subcode of 100 other than the account ones classifies as INVALID).
SUBCODE_EVENT_TIME_TOO_OLD = 2804003
UNKNOWN_PATH_CODE = 2500  # Meta's "Unknown path components"
DEFAULT_TIMEOUT_DELAY = 1.0  # seconds the "timeout" fault waits; longer than the tests' client
STOP_GRACE_SECONDS = 5.0  # how long stop() waits for connection threads to finish
LISTEN_BACKLOG = 128  # the benchmark opens many connections at once; the default is 5
SERVE_POLL_SECONDS = 0.05  # how quickly serve_forever notices stop()

FAULT_KINDS = frozenset(
    {
        "http500",  # HTTP 500 with an HTML page (a proxy or Meta's edge)
        "http503_json",  # HTTP 503, code 2 "Service temporarily unavailable", is_transient
        "rate_limit",  # code 4 (or code=17/32/341/613/80004 ...), HTTP 400 (or status=429)
        "transient",  # code 1 with is_transient: true, HTTP 500 (or status=...)
        "timeout",  # no answer for `delay` seconds, then drop (or answer, accept=True)
        "reset",  # read the request, close the connection without any response
        "token",  # code 190/463 expired token, HTTP 400
        "permission",  # code 200 permissions error, HTTP 403
        "received_zero",  # HTTP 200 with events_received 0; nothing recorded as accepted
        "error",  # any envelope: status=, code=, subcode=, message=
    }
)

_RATE_LIMIT_ERRORS: dict[int, tuple[str, int | None]] = {
    4: ("(#4) Application request limit reached", None),
    17: ("(#17) User request limit reached", 2446079),
    32: ("(#32) Page request limit reached", None),
    341: ("(#341) Application limit reached", None),
    613: ("(#613) Calls to this api have exceeded the rate limit.", 1487742),
    80004: ("(#80004) There have been too many calls to this ad-account.", 2446079),
}

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int | None = None
    code: int | None = None
    subcode: int | None = None
    message: str | None = None
    delay: float = DEFAULT_TIMEOUT_DELAY
    accept: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # Meta's usage headers on this answer


@dataclass
class _Reply:
    status: int
    payload: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


_trace_ids = itertools.count(1)


def _fbtrace() -> str:
    return f"Fake{next(_trace_ids):08x}"


def _json_reply(status: int, obj: JsonObject) -> _Reply:
    return _Reply(status, json.dumps(obj, separators=(",", ":")).encode())


def _error(
    status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    type: str = "OAuthException",
    transient: bool = False,
    user_title: str | None = None,
    user_msg: str | None = None,
) -> _Reply:
    """Meta's error envelope (reference §3.8)."""
    error: JsonObject = {"message": message, "type": type, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["is_transient"] = transient
    if user_title:
        error["error_user_title"] = user_title
    if user_msg:
        error["error_user_msg"] = user_msg
    error["fbtrace_id"] = _fbtrace()
    return _json_reply(status, {"error": error})


def _invalid(user_msg: str, *, subcode: int | None = None, title: str | None = None) -> _Reply:
    return _error(
        400, 100, "Invalid parameter", subcode=subcode, user_title=title, user_msg=user_msg
    )


# Meta refuses plain contact information (meta-api.md section 4): these must be SHA-256 hex.
_HASHED_USER_DATA = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _unhashed_customer_info(user_data: JsonObject) -> str | None:
    """The first customer information key whose value is not a SHA-256 digest (or list of)."""
    for key in _HASHED_USER_DATA:
        if key not in user_data:
            continue
        value = user_data[key]
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and _SHA256_HEX.fullmatch(v) for v in values):
            return key
    return None


def dataset_id_for(waba_id: str) -> str:
    """The numeric dataset id the fake gives a WABA: stable across fakes and runs."""
    digest = int(hashlib.sha256(waba_id.encode()).hexdigest()[:15], 16)
    return str(10**15 + digest % 10**15)


class LoopbackServer(ThreadingHTTPServer):
    """A loopback fake's HTTP server: a thread per connection, each connection known so that
    stopping closes them all. ``fake`` is the object its handler answers from."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, fake: Any, host: str, port: int, handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_changed = threading.Condition()
        self.connections_opened = 0
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), slow without a resolver.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_changed:
            self.connections.add(request)
            self.connections_opened += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self.connections_changed:
                self.connections.discard(request)
                self.connections_changed.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timeout tests) is normal here; stay quiet about it."""

    def close_all_connections(self, grace: float) -> None:
        """Wake every connection thread (blocked reading the next keep-alive request) and wait
        until each has closed its socket, so no socket outlives the fake."""
        with self.connections_changed:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):  # already closed by its thread
                    conn.shutdown(socket.SHUT_RDWR)
            self.connections_changed.wait_for(lambda: not self.connections, timeout=grace)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: needs Content-Length on every answer
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    server: LoopbackServer

    def do_GET(self) -> None:
        self.server.fake._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._serve(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request logging: the benchmark pushes thousands of requests through."""

    def send(self, reply: _Reply) -> None:
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.payload)))
            self.send_header("x-fb-trace-id", _fbtrace())
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.payload)
        except OSError:
            self.close_connection = True  # the client gave up (timeout fault) or reset


class LoopbackFake:
    """What the loopback fakes share: served on a thread of their own, stopped with every
    connection closed (no socket outlives the fake), a context manager, their URL."""

    handler: type[BaseHTTPRequestHandler]
    thread_name = "fake"

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self.bind_port = port  # 0: any free port
        self._stopping = threading.Event()  # set while stopping: wakes answers that wait
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = LoopbackServer(self, self.host, self.bind_port, self.handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SERVE_POLL_SECONDS},
            name=self.thread_name,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection and the listening socket; idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_all_connections(STOP_GRACE_SECONDS)
        server.server_close()
        if thread is not None:
            thread.join(STOP_GRACE_SECONDS)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, the client's base_url."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self._server.server_name}:{self._server.server_port}"


class FakeGraph(LoopbackFake):
    """The fake Graph API. Start it with ``with FakeGraph() as fake`` (or ``start()``/``stop()``);
    point a client at ``fake.url``."""

    handler = _Handler
    thread_name = "fake-graph"

    def __init__(
        self,
        *,
        valid_tokens: Iterable[str] | None = None,
        tokens_without_permission: Iterable[str] = (),
        strict_datasets: bool = False,
        app_secret: str | None = None,
        version: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        on_accept: Callable[[list[JsonObject]], None] | None = None,
    ) -> None:
        self.valid_tokens: set[str] = (
            set(valid_tokens) if valid_tokens is not None else {DEFAULT_TOKEN}
        )
        # Valid tokens that lack whatsapp_business_manage_events: code 200, HTTP 403.
        self.tokens_without_permission: set[str] = set(tokens_without_permission)
        # When on, events to a dataset the fake does not know answer 100/33.
        self.strict_datasets = strict_datasets
        # When set, every call must carry a correct appsecret_proof.
        self.app_secret = app_secret
        # When set, only this Graph version is served; any "v..." otherwise.
        self.version = version
        super().__init__(host, port)
        # Called with each accepted batch of events, outside the lock (`waconv fake-graph`).
        self.on_accept = on_accept
        # ctwa_clids Meta does not know: an event carrying one rejects its batch (100/2804087).
        self.invalid_clids: set[str] = set()
        # dataset_id -> the WABA it is linked to; events of another WABA: 100/2804132.
        self.dataset_links: dict[str, str] = {}
        self.known_datasets: set[str] = set()
        self.datasets: dict[str, str] = {}  # waba_id -> dataset_id, from POST /{waba}/dataset
        self.subscribed: set[str] = set()  # WABAs with POST /{waba}/subscribed_apps
        self.dataset_names: dict[str, str] = {}  # dataset_id -> dataset_name given at creation
        # Headers on every events answer (X-App-Usage, X-Business-Use-Case-Usage ...).
        self.usage_headers: dict[str, str] = {}

        # Seconds each events request waits before its answer (Meta's latency, for the
        # concurrency tests and the fleet benchmark); requests waiting at once are counted.
        self.latency = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.requests: list[JsonObject] = []
        self.events: list[JsonObject] = []
        self._faults: collections.deque[Fault] = collections.deque()

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted so far (a reused session opens one)."""
        return self._server.connections_opened if self._server is not None else 0

    # -- programming it ----------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        kind: str = "http500",
        *,
        status: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        message: str | None = None,
        delay: float = DEFAULT_TIMEOUT_DELAY,
        accept: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Queue ``n`` faults of ``kind`` (see FAULT_KINDS); each events request consumes one,
        in order, before any validation. ``accept=True`` on "timeout" records the events as
        accepted after the delay (Meta got them, the client never heard back). ``headers``
        go on the fault's answer (Meta's usage headers)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {sorted(FAULT_KINDS)}")
        extra = tuple((headers or {}).items())
        fault = Fault(kind, status, code, subcode, message, delay, accept, extra)
        with self.lock:
            self._faults.extend([fault] * n)

    def pending_faults(self) -> int:
        with self.lock:
            return len(self._faults)

    def add_dataset(self, waba_id: str, dataset_id: str | None = None) -> str:
        """Register a dataset that already exists for a WABA (as Events Manager would), linked
        to it; returns its id."""
        dataset = dataset_id or dataset_id_for(waba_id)
        with self.lock:
            self.datasets[waba_id] = dataset
            self.known_datasets.add(dataset)
            self.dataset_links[dataset] = waba_id
        return dataset

    # -- recordings --------------------------------------------------------------------------

    def accepted_event_ids(self) -> collections.Counter[str]:
        """event_id -> how many times Meta accepted it; a value above 1 is a duplicate."""
        with self.lock:
            return collections.Counter(str(event.get("event_id")) for event in self.events)

    def batch_sizes(self, *, accepted_only: bool = False) -> list[int]:
        """Events per events request, in arrival order (every attempt, or only the accepted)."""
        with self.lock:
            return [
                len(request["json"]["data"])
                for request in self.requests
                if request["kind"] == "events"
                and isinstance(request["json"], dict)
                and isinstance(request["json"].get("data"), list)
                and (not accepted_only or request["accepted"])
            ]

    def events_requests(self) -> list[JsonObject]:
        with self.lock:
            return [request for request in self.requests if request["kind"] == "events"]

    def reset(self) -> None:
        """Forget recordings, queued faults and usage headers (configuration stays)."""
        with self.lock:
            self.usage_headers.clear()
            self.requests.clear()
            self.events.clear()
            self._faults.clear()

    # -- serving -----------------------------------------------------------------------------

    def _faulted(self, handler: Any, fault: Fault) -> None:
        """``fault`` is about to be played on this request (a hook for tests that watch)."""

    def _serve(self, handler: _Handler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length > 0 else b""
        split = urlsplit(handler.path)
        parts = [unquote(part) for part in split.path.split("/") if part]
        query = dict(parse_qsl(split.query))
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        is_events = method == "POST" and len(parts) == 3 and parts[2] == "events"
        record: JsonObject = {
            "method": method,
            "path": split.path,
            "query": query,
            "headers": dict(handler.headers.items()),
            "json": body,
            "kind": "events" if is_events else (parts[2] if len(parts) == 3 else "other"),
            "status": None,
            "accepted": False,
        }
        with self.lock:
            self.requests.append(record)
            fault = self._faults.popleft() if is_events and self._faults else None
        if fault is not None:
            self._faulted(handler, fault)

        if fault is not None and fault.kind == "reset":
            handler.close_connection = True  # socketserver closes it; the client reads nothing
            return
        if fault is not None and fault.kind == "timeout":
            self._stopping.wait(fault.delay)
            if not fault.accept or self._stopping.is_set():
                handler.close_connection = True
                return
            fault = None  # answer normally, too late for the client

        if is_events and self.latency:
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self._stopping.wait(self.latency)
            with self.lock:
                self.in_flight -= 1
        if fault is not None:
            reply = self._fault_reply(fault)
            reply.headers.update(fault.headers)
        elif bad_json:
            reply = _invalid("the request body is not valid JSON")
        else:
            reply = self._route(method, parts, query, handler, body, record)
        if is_events and self.usage_headers:
            reply.headers = {**self.usage_headers, **reply.headers}
        record["status"] = reply.status
        handler.send(reply)

    def _fault_reply(self, fault: Fault) -> _Reply:
        kind = fault.kind
        if kind == "http500":
            page = b"<html><body><h1>500 Internal Server Error</h1>Sorry.</body></html>"
            return _Reply(fault.status or 500, page, "text/html; charset=utf-8")
        if kind == "http503_json":
            message = fault.message or "Service temporarily unavailable"
            return _error(fault.status or 503, 2, message, transient=True)
        if kind == "rate_limit":
            code = fault.code or 4
            message, subcode = _RATE_LIMIT_ERRORS.get(code, (f"(#{code}) Rate limit reached", None))
            return _error(
                fault.status or 400,
                code,
                fault.message or message,
                subcode=fault.subcode or subcode,
            )
        if kind == "transient":
            message = fault.message or "An unknown error occurred"
            return _error(fault.status or 500, fault.code or 1, message, transient=True)
        if kind == "token":
            return _error(
                fault.status or 400,
                190,
                fault.message or "Error validating access token: Session has expired.",
                subcode=fault.subcode or 463,
            )
        if kind == "permission":
            return _error(fault.status or 403, fault.code or 200, "(#200) Permissions error")
        if kind == "received_zero":
            return _json_reply(
                200, {"events_received": 0, "messages": [], "fbtrace_id": _fbtrace()}
            )
        # "error": whatever the caller asked for.
        return _error(
            fault.status or 400,
            fault.code if fault.code is not None else 100,
            fault.message or "Invalid parameter",
            subcode=fault.subcode,
        )

    def _route(
        self,
        method: str,
        parts: list[str],
        query: dict[str, str],
        handler: _Handler,
        body: Any,
        record: JsonObject,
    ) -> _Reply:
        version_ok = bool(parts) and (
            parts[0] == self.version if self.version else parts[0].startswith("v")
        )
        if len(parts) != 3 or not version_ok:
            return _error(400, UNKNOWN_PATH_CODE, f"Unknown path components: /{'/'.join(parts)}")
        _, object_id, edge = parts
        denied = self._check_auth(handler.headers.get("Authorization"), query)
        if denied is not None:
            return denied
        if method == "POST" and edge == "events":
            return self._events(object_id, body, record)
        if edge == "dataset" and method == "POST":
            name = body.get("dataset_name") if isinstance(body, dict) else None
            name = name or query.get("dataset_name")
            return _json_reply(200, {"id": self._get_or_create_dataset(object_id, name)})
        if edge == "dataset" and method == "GET":
            with self.lock:
                dataset = self.datasets.get(object_id)
            return _json_reply(200, {"data": [{"id": dataset}] if dataset else []})
        if edge == "subscribed_apps" and method == "POST":
            with self.lock:
                self.subscribed.add(object_id)
            return _json_reply(200, {"success": True})
        return _error(400, UNKNOWN_PATH_CODE, f"Unknown path components: /{edge}")

    def _check_auth(self, authorization: str | None, query: dict[str, str]) -> _Reply | None:
        token = ""
        if authorization and authorization.startswith("Bearer "):
            token = authorization[len("Bearer ") :].strip()
        if token not in self.valid_tokens:
            return _error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        if self.app_secret:
            proof = query.get("appsecret_proof")
            if not proof:
                return _error(
                    400,
                    100,
                    "API calls from the server require an appsecret_proof argument",
                    type="GraphMethodException",
                )
            expected = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256)
            if not hmac.compare_digest(proof, expected.hexdigest()):
                return _error(
                    400,
                    100,
                    "Invalid appsecret_proof provided in the API argument",
                    type="GraphMethodException",
                )
        if token in self.tokens_without_permission:
            return _error(403, 200, "(#200) Permissions error")
        return None

    def _get_or_create_dataset(self, waba_id: str, name: str | None) -> str:
        with self.lock:
            dataset = self.datasets.get(waba_id)
            if dataset is None:
                dataset = self.datasets[waba_id] = dataset_id_for(waba_id)
                if name:
                    self.dataset_names[dataset] = str(name)
            self.known_datasets.add(dataset)
            # A dataset made for a WABA is linked to it, as Meta's get-or-create does.
            self.dataset_links.setdefault(dataset, waba_id)
            return dataset

    def _events(self, dataset_id: str, body: Any, record: JsonObject) -> _Reply:
        with self.lock:
            known = (
                dataset_id in self.known_datasets
                or dataset_id in self.dataset_links
                or dataset_id in self.datasets.values()
            )
            linked_waba = self.dataset_links.get(dataset_id)
        if self.strict_datasets and not known:
            return _error(
                400,
                100,
                f"Unsupported post request. Object with ID '{dataset_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation",
                subcode=SUBCODE_DATASET_UNREACHABLE,
                type="GraphMethodException",
            )
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not data:
            return _invalid("The parameter data is required and must be a non-empty list")
        if len(data) > MAX_EVENTS:
            return _invalid(f"data: at most {MAX_EVENTS} events per request, got {len(data)}")
        rejection = self._first_invalid_event(data, linked_waba)
        if rejection is not None:
            return rejection  # Meta rejects the whole batch and processes none of it
        with self.lock:
            self.events.extend(data)
            record["accepted"] = True
        if self.on_accept is not None:
            self.on_accept(data)
        return _json_reply(
            200, {"events_received": len(data), "messages": [], "fbtrace_id": _fbtrace()}
        )

    def _first_invalid_event(self, data: list[Any], linked_waba: str | None) -> _Reply | None:
        """The error Meta would answer for the first invalid event, or None (reference §3.3)."""
        oldest = clock.utcnow().timestamp() - EVENT_TIME_LIMIT_SECONDS
        invalid_clids = self.invalid_clids
        names = BUSINESS_MESSAGING_EVENT_NAMES
        for index, event in enumerate(data):
            where = f"data[{index}]"
            if not isinstance(event, dict):
                return _invalid(f"{where} is not an object")
            if event.get("action_source") != "business_messaging":
                return _invalid(f"{where}.action_source must be business_messaging")
            if event.get("messaging_channel") != "whatsapp":
                return _invalid(f"{where}.messaging_channel must be whatsapp")
            if event.get("event_name") not in names:
                return _invalid(
                    f"{where}.event_name {event.get('event_name')!r} is not supported",
                    subcode=SUBCODE_INVALID_EVENT_NAME,
                    title="Messaging Event Invalid Event Type",
                )
            event_time = event.get("event_time")
            if not isinstance(event_time, int | float) or isinstance(event_time, bool):
                return _invalid(f"{where}.event_time must be a unix timestamp in seconds")
            if event_time < oldest:
                return _invalid(
                    f"{where}.event_time is more than 7 days in the past",
                    subcode=SUBCODE_EVENT_TIME_TOO_OLD,
                    title="Event Timestamp Too Old",
                )
            user_data = event.get("user_data")
            if not isinstance(user_data, dict):
                return _invalid(f"{where}.user_data is required")
            clid = user_data.get("ctwa_clid")
            if not clid or clid in invalid_clids:
                return _invalid(
                    f"{where}.user_data.ctwa_clid is invalid",
                    subcode=SUBCODE_INVALID_CTWA_CLID,
                    title="Messaging Event Invalid Ctwa Clid",
                )
            waba = user_data.get("whatsapp_business_account_id")
            if not waba:
                return _invalid(f"{where}.user_data.whatsapp_business_account_id is required")
            unhashed = _unhashed_customer_info(user_data)
            if unhashed is not None:
                return _invalid(f"{where}.user_data.{unhashed} must be SHA-256 hashed")
            if linked_waba is not None and str(waba) != linked_waba:
                return _invalid(
                    f"{where}: no WhatsApp Business account linked to this dataset",
                    subcode=SUBCODE_DATASET_NOT_LINKED,
                    title="No WhatsApp Business Account Linked",
                )
        return None
